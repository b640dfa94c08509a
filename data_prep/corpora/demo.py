"""The demo corpus: a synthetic, seeded stand-in for IEMOCAP plus an unlabelled pretraining set.

Nothing is downloaded. Every utterance is drawn from one generative process:

  speaker (gender, pitch, loudness, rate, formants, face identity, resting face)
  emotion (anger, happy, neutral, sad; latent in the unlabelled part)
    -> text: neutral-worded content, plus (sometimes) a phrase naming the emotion
    -> face: per-frame FER+ logits = resting face + intensity(t) x the emotion's expression,
       10 fps; FER+ soft labels = their softmax; 342-d "DenseNet" features = a fixed random
       ReLU layer over (logits, identity, head pose)
    -> voice: a synthesised 16 kHz signal (a glottal-like source at an emotion- and
       speaker-dependent pitch, range, loudness, syllable rate, brightness and breathiness,
       through speaker formants, plus room noise), turned into frames by
       data_prep/acoustic_features.py (log-mel 40 + pitch + energy, 60 ms, <= 64 frames)

Each modality alone is ambiguous on part of the data, in a different way, so fusion pays:
- text names the emotion in only some utterances (and names the wrong one now and then);
- the face separates anger from happy, but a sad face is a slightly sadder neutral one, and
  some speakers keep a poker face (no expression at all);
- the voice carries arousal: anger and happy sound alike (high, loud, fast, bright), while
  neutral and sad differ (sad: low, quiet, slow, dark, breathy); speaker pitch and level
  vary and overlap across emotions.
`probe_accuracies` measures this with numpy logistic regressions (leave-one-session-out):
on the default corpus single modalities reach roughly 50-70 % and their fusion 90 %+.

The labelled part mirrors IEMOCAP's protocol: 5 sessions x 2 speakers ('1F', '1M', ...),
IEMOCAP-like class priors, split = fold 9 of the 10-fold protocol (session 5: '5F' valid,
'5M' test; the rest train). The unlabelled part uses 20 other speakers (no session) and
names the emotion in its text more often ("i feel so angry"), so that masked-word
pretraining can learn to predict an emotion word from face and voice.

Output folder:

  labelled.jsonl, unlabelled.jsonl   manifests (data_prep/manifest.py contract)
  visual/<id>.npy                    [T, 342] float16, 10 fps, T <= 22
  soft_labels/<id>.npy               [T, 8] float32, rows sum to 1 (neu hap sur sad ang dis fea con)
  acoustic/<id>.npy                  [T, 43] float16, 60 ms frames, T <= 37
  wav/<id>.wav                       only with --write_wavs
  demo_info.json                     generation settings and dimensions

  python -m data_prep.corpora.demo --output DIR [--num_labelled N --num_unlabelled M --seed S] \
      [--workers W] [--write_wavs] [--probe]
"""

import argparse
import dataclasses
import json
import multiprocessing
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.signal
import soundfile
import threadpoolctl

from data_prep import acoustic_features
from data_prep.corpora import common

EMOTIONS = common.EMOTIONS
FER_CLASSES = ('neu', 'hap', 'sur', 'sad', 'ang', 'dis', 'fea', 'con')
VISUAL_DIM = 342
VISUAL_FPS = 10
SAMPLE_RATE = 16000
# f0 >= 75 Hz (the lowest synthesised voice is ~90 Hz) lets YIN use 512-sample windows: 3x faster than at 60 Hz.
ACOUSTIC_CONFIG = acoustic_features.AcousticFeatureConfig(kinds=('logmel', 'pitch', 'energy'), n_mels=40,
                                                          pitch_fmin=75.0)
NUM_SESSIONS = 5
# IEMOCAP's 4-class proportions (ang 1103, hap+exc 1636, neu 1708, sad 1084).
LABELLED_PRIOR = (0.20, 0.30, 0.31, 0.19)
_MIN_SECONDS, _MAX_SECONDS = 0.6, 2.2
_IDENTITY_DIM, _POSE_DIM = 16, 4

# Voice per emotion: pitch factor, pitch range (semitones), level (dB re neutral), syllables/s,
# brightness (0 dark .. 1 bright), breathiness. Anger and happy share high arousal.
_VOICE = {
    'anger': (1.30, 5.0, 8.0, 6.5, 0.85, 0.03),
    'happy': (1.34, 5.5, 7.0, 6.5, 0.80, 0.03),
    'neutral': (1.00, 2.0, 0.0, 5.2, 0.50, 0.04),
    'sad': (0.87, 1.0, -6.0, 4.0, 0.25, 0.14),
}
# Face at the expression's apex: FER+ logits (neu hap sur sad ang dis fea con).
# Anger and happy differ; sad is a slightly sadder neutral face.
_REST_FACE = np.array([2.2, 0.2, 0.0, 0.3, 0.0, 0.0, 0.0, 0.2])
_FACE = {
    'anger': np.array([0.3, 0.0, 0.3, 0.4, 3.2, 1.4, 0.2, 1.0]),
    'happy': np.array([0.5, 3.4, 1.2, 0.0, 0.0, 0.0, 0.0, 0.0]),
    'neutral': np.array([2.6, 0.2, 0.0, 0.3, 0.0, 0.0, 0.0, 0.3]),
    'sad': np.array([2.4, 0.1, 0.0, 0.8, 0.0, 0.1, 0.2, 0.3]),
}

# Text. Content words carry no emotion; cue phrases name one (and contain the label words).
_CUES = {
    'anger': ('i am so angry', 'this makes me angry', 'i am furious about it', 'i am full of anger',
              'my anger is growing', 'i am really mad at you', 'i hate this', 'i am annoyed',
              'this is so irritating', 'i can not hide my anger', 'i feel so angry', 'i am angry'),
    'happy': ('i am so happy', 'this makes me happy', 'i am glad to hear it', 'what a wonderful day', 'i love it',
              'i am delighted', 'that is great news', 'i am really excited', 'what a joy', 'i feel happy today',
              'i feel so happy', 'i am happy'),
    'neutral': ('i am neutral about it', 'it is fine', 'that is okay', 'that is normal', 'i feel calm',
                'nothing special', 'same as usual', 'i stay neutral', 'it is okay i guess', 'just a normal day',
                'i feel neutral', 'i am neutral'),
    'sad': ('i am so sad', 'this makes me sad', 'sadly it is over', 'i feel unhappy', 'i am upset',
            'i miss them so much', 'i feel lonely', 'i want to cry', 'it is a sad story', 'i feel miserable',
            'i feel so sad', 'i am sad'),
}
_WORDS = {
    'subj': ('i', 'we', 'you', 'they', 'he', 'she', 'my brother', 'my sister', 'our neighbour', 'the teacher',
             'my mother', 'my father', 'the boss', 'your friend'),
    'noun': ('car', 'house', 'letter', 'phone', 'book', 'train', 'meeting', 'dinner', 'job', 'money', 'ticket',
             'key', 'door', 'window', 'table', 'report', 'bag', 'coffee', 'game', 'movie', 'plan', 'party', 'garden',
             'dog', 'cat', 'computer', 'email', 'bill', 'road', 'bus', 'test', 'class', 'project', 'shirt',
             'picture', 'song', 'box', 'chair', 'map', 'flight', 'bike', 'camera', 'jacket', 'lamp', 'radio',
             'wallet', 'umbrella', 'sofa', 'boat', 'cake'),
    'verb': ('take', 'bring', 'find', 'see', 'call', 'fix', 'buy', 'sell', 'move', 'clean', 'open', 'close',
             'check', 'read', 'write', 'send', 'pay', 'carry', 'watch', 'paint', 'leave', 'get', 'keep', 'lose',
             'visit', 'finish', 'start', 'cook', 'borrow', 'return'),
    'past': ('took', 'brought', 'found', 'saw', 'called', 'fixed', 'bought', 'sold', 'moved', 'cleaned', 'opened',
             'closed', 'checked', 'read', 'wrote', 'sent', 'paid', 'carried', 'watched', 'painted', 'left', 'got',
             'kept', 'lost', 'visited', 'finished', 'started', 'cooked', 'borrowed', 'returned'),
    'place': ('station', 'airport', 'beach', 'market', 'park', 'hospital', 'library', 'bank', 'church', 'stadium',
              'restaurant', 'museum', 'bakery', 'garage', 'farm', 'office', 'school', 'hotel', 'harbour', 'gym'),
    'room': ('kitchen', 'bedroom', 'hall', 'basement', 'attic', 'bathroom', 'car', 'closet'),
    'time': ('yesterday', 'today', 'tomorrow', 'last week', 'next week', 'tonight', 'this morning', 'on monday',
             'on friday', 'in the evening', 'after lunch', 'last year', 'soon', 'later', 'on sunday',
             'this afternoon', 'every day', 'last night'),
    'point': ('noon', 'monday', 'the weekend', 'the end of the month', 'dinner', 'midnight', 'friday', 'the holiday',
              'the meeting', 'lunch'),
    'name': ('john', 'mary', 'peter', 'anna', 'david', 'sarah', 'mike', 'linda', 'tom', 'emma', 'paul', 'lucy',
             'james', 'kate', 'robert', 'julia', 'chris', 'nina'),
    'relative': ('brother', 'sister', 'mother', 'father', 'uncle', 'aunt', 'cousin', 'grandmother', 'boss',
                 'neighbour'),
    'opener': ('well,', 'so', 'you know,', 'listen,', 'honestly,', 'look,', 'anyway,', 'by the way,'),
}
_TEMPLATES = (
    '{subj} {past} the {noun} {time}', 'did you {verb} the {noun} {time}', '{subj} will {verb} the {noun} {time}',
    'we need to {verb} the {noun} before {point}', 'i told {name} about the {noun}', 'the {noun} is at the {place}',
    '{name} and {name2} went to the {place} {time}', 'can we talk about the {noun}', 'where did you put the {noun}',
    '{name} wants to {verb} the {noun} at the {place}', 'have you seen the {noun} {name} {past}',
    'i think the {noun} is in the {room}', '{subj} {past} {name} at the {place}',
    'let us {verb} the {noun} after {point}', 'my {relative} {past} the {noun} {time}',
    'is the {noun} still in the {room}', 'you should {verb} the {noun} before {point}',
    '{name} {past} the {noun} and the {noun2}',
)
_QUESTION_STARTS = ('did ', 'can ', 'where ', 'have ', 'is ')


@dataclasses.dataclass(frozen=True)
class DemoConfig:
  """Size and difficulty of the demo corpus.

  Attributes:
    num_labelled: labelled utterances (5 sessions x 2 speakers).
    num_unlabelled: unlabelled clips for pretraining (other speakers).
    seed: everything follows from it; the output does not depend on `workers`.
    num_unlabelled_speakers: speakers of the unlabelled part (half female).
    labelled_explicit: probability that a labelled utterance's text names an emotion.
    unlabelled_explicit: the same for the unlabelled part.
    misleading: probability that a named emotion is not the true one.
    poker_face: probability of an utterance without facial expression.
    no_face: probability of no face at all (one zero frame, neutral soft label: spec section 2).
    write_wavs: also write the synthesised audio (16 kHz PCM) and fill the manifests' wav field.
  """
  num_labelled: int = 2000
  num_unlabelled: int = 3000
  seed: int = 0
  num_unlabelled_speakers: int = 20
  labelled_explicit: float = 0.4
  unlabelled_explicit: float = 0.5
  misleading: float = 0.1
  poker_face: float = 0.3
  no_face: float = 0.03
  write_wavs: bool = False


@dataclasses.dataclass(frozen=True)
class Speaker:
  name: str
  session: str | None
  f0: float  # Hz, neutral speech
  gain_db: float
  rate: float  # syllable-rate factor
  formants: tuple[float, float]  # Hz
  expressivity: float
  face_bias: np.ndarray  # [8] FER+ logit offsets of the resting face
  identity: np.ndarray  # [_IDENTITY_DIM]


@dataclasses.dataclass(frozen=True)
class _World:
  """What all utterances share: the speakers and the fixed 'face network'."""
  config: DemoConfig
  speakers: dict[str, Speaker]
  face_weights: np.ndarray  # [8 + identity + pose, VISUAL_DIM]
  face_bias: np.ndarray  # [VISUAL_DIM]


def _make_speaker(rng: np.random.Generator, name: str, session: str | None, gender: str) -> Speaker:
  female = gender == 'F'
  return Speaker(
      name=name, session=session,
      f0=float(rng.normal(210, 18) if female else rng.normal(118, 10)),
      gain_db=float(rng.normal(0, 1.5)), rate=float(rng.normal(1.0, 0.08)),
      formants=(float(rng.uniform(600, 850) if female else rng.uniform(480, 700)),
                float(rng.uniform(1700, 2300) if female else rng.uniform(1300, 1900))),
      expressivity=float(rng.uniform(0.7, 1.2)), face_bias=rng.normal(0, 0.2, 8),
      identity=rng.normal(0, 0.4, _IDENTITY_DIM))


def _make_world(config: DemoConfig) -> _World:
  rng = np.random.default_rng((config.seed, 2))
  speakers = {}
  for session in range(1, NUM_SESSIONS + 1):
    for gender in 'FM':
      name = f'{session}{gender}'
      speakers[name] = _make_speaker(rng, name, str(session), gender)
  for i in range(config.num_unlabelled_speakers):
    gender = 'FM'[i % 2]
    name = f'p{i // 2 + 1:02d}{gender}'
    speakers[name] = _make_speaker(rng, name, None, gender)
  latent = len(FER_CLASSES) + _IDENTITY_DIM + _POSE_DIM
  return _World(config, speakers, face_weights=rng.normal(0, 1 / np.sqrt(latent), (latent, VISUAL_DIM)),
                face_bias=rng.normal(-0.2, 0.5, VISUAL_DIM))


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
  return options[rng.integers(len(options))]


def _clause(rng: np.random.Generator) -> str:
  fill = {key: _pick(rng, words) for key, words in _WORDS.items()}
  fill['name2'] = _pick(rng, [n for n in _WORDS['name'] if n != fill['name']])
  fill['noun2'] = _pick(rng, [n for n in _WORDS['noun'] if n != fill['noun']])
  i = rng.integers(len(_WORDS['verb']))
  fill['verb'], fill['past'] = _WORDS['verb'][i], _WORDS['past'][i]
  return _pick(rng, _TEMPLATES).format(**fill)


def _sentence(clause: str) -> str:
  return clause + ('?' if clause.startswith(_QUESTION_STARTS) else '.')


def make_text(rng: np.random.Generator, emotion: str, explicit: float, misleading: float) -> str:
  """An utterance: one or two content clauses, and with probability `explicit` an emotion cue."""
  parts = [_clause(rng)]
  if rng.random() < 0.15:
    parts.append(_clause(rng))
  text = _sentence(parts[0]) if len(parts) == 1 else f'{parts[0]} and {_sentence(parts[1])}'
  if rng.random() < 0.2:
    text = f'{_pick(rng, _WORDS["opener"])} {text}'
  if rng.random() < explicit:
    named = emotion if rng.random() >= misleading else _pick(rng, [e for e in EMOTIONS if e != emotion])
    cue = _pick(rng, _CUES[named])
    text = f'{cue}, {text}' if rng.random() < 0.5 else f'{text} {cue}.'
  return text


def _syllables(text: str) -> int:
  return sum(max(1, len(re.findall(r'[aeiouy]+', word))) for word in re.findall(r'[a-z]+', text))


def _ar1(rng: np.random.Generator, shape: tuple[int, ...], coefficient: float, scale: float) -> np.ndarray:
  """Smooth noise along axis 0 (first-order autoregressive)."""
  return scipy.signal.lfilter([scale], [1, -coefficient], rng.normal(0, 1, shape), axis=0)


def synthesise_voice(rng: np.random.Generator, speaker: Speaker, emotion: str, num_syllables: int) -> np.ndarray:
  """A float32 16 kHz signal 'speaking' `num_syllables` syllables with `emotion` (see module doc)."""
  intensity = rng.uniform(0.35, 1.1)
  neutral, target = np.array(_VOICE['neutral']), np.array(_VOICE[emotion])
  pitch, semitones, level_db, rate, brightness, breathiness = neutral + intensity * (target - neutral)
  rate *= speaker.rate * rng.lognormal(0, 0.08)
  # Syllables and pauses, cut to the maximum duration.
  syllables = rng.gamma(8, 1 / (8 * rate), num_syllables)
  pauses = np.where(rng.random(num_syllables) < 0.15, rng.uniform(0.06, 0.25, num_syllables), 0.0)
  durations = np.stack([syllables, pauses], axis=1).reshape(-1)
  ends = np.minimum(np.cumsum(durations), _MAX_SECONDS)
  num_samples = int(max(ends[-1], _MIN_SECONDS) * SAMPLE_RATE)
  bounds = np.concatenate([[0], (ends * SAMPLE_RATE).astype(int)])
  counts = np.diff(bounds)
  segment = np.repeat(np.arange(len(counts)), counts)
  position = (np.arange(len(segment)) - bounds[segment]) / np.maximum(counts[segment], 1)
  envelope = np.zeros(num_samples, np.float32)
  voiced = segment % 2 == 0  # even segments are syllables, odd ones pauses
  envelope[:len(segment)][voiced] = np.sin(np.pi * position[voiced]) ** 0.6
  # Pitch: declination plus a random accent per syllable, interpolated between syllable centres.
  centres = (bounds[:-1:2] + bounds[1::2]) / 2
  accents = rng.normal(0, semitones / 2, len(centres)) + np.linspace(semitones / 3, -semitones / 3, len(centres))
  base = speaker.f0 * pitch * 2 ** (rng.normal(0, 0.5) / 12)
  f0 = base * np.exp2(np.interp(np.arange(num_samples), centres, accents / 12)).astype(np.float32)
  # Source: a sawtooth (all harmonics), darkened by a one-pole low-pass, through two formants.
  cycles = np.cumsum(f0 / SAMPLE_RATE, dtype=np.float64)
  source = (2 * (cycles - np.floor(cycles)) - 1).astype(np.float32)
  smoothing = 0.9 - 0.6 * brightness
  source = scipy.signal.lfilter([1 - smoothing], [1, -smoothing], source)
  voice = source.copy()
  for formant in speaker.formants:
    b, a = scipy.signal.iirpeak(formant, Q=5, fs=SAMPLE_RATE)
    voice += 2 * scipy.signal.lfilter(b, a, source)
  voice /= np.sqrt(np.mean(voice ** 2)) + 1e-9
  voice += breathiness * 3 * rng.standard_normal(num_samples, dtype=np.float32)
  amplitude = 0.05 * 10 ** ((level_db + speaker.gain_db + rng.normal(0, 2)) / 20)
  noise_floor = 10 ** (rng.uniform(-58, -44) / 20)
  room = scipy.signal.lfilter([noise_floor * 0.45], [1, -0.9], rng.standard_normal(num_samples, dtype=np.float32))
  return (amplitude * envelope * voice + room).astype(np.float32)


def synthesise_face(rng: np.random.Generator, world: _World, speaker: Speaker, emotion: str,
                    num_frames: int) -> tuple[np.ndarray, np.ndarray]:
  """(features [T, 342], FER+ soft labels [T, 8]) of the speaker's face track."""
  config = world.config
  if rng.random() < config.no_face:
    soft = np.zeros((1, len(FER_CLASSES)), np.float32)
    soft[0, 0] = 1.0
    return np.zeros((1, VISUAL_DIM), np.float32), soft
  if rng.random() < config.poker_face:
    intensity = rng.uniform(0.0, 0.2)
  else:
    intensity = rng.uniform(0.5, 1.2) * speaker.expressivity
  # The expression builds up, holds around the middle of the utterance and fades.
  envelope = np.sin(np.pi * np.linspace(0.1, 0.9, num_frames)) ** 0.5
  logits = (_REST_FACE + speaker.face_bias + intensity * envelope[:, None] * (_FACE[emotion] - _REST_FACE) +
            _ar1(rng, (num_frames, len(FER_CLASSES)), 0.6, 0.45))
  soft = np.exp(logits - logits.max(axis=1, keepdims=True))
  soft /= soft.sum(axis=1, keepdims=True)
  pose = _ar1(rng, (num_frames, _POSE_DIM), 0.8, 0.3)
  latent = np.concatenate([logits, np.broadcast_to(speaker.identity, (num_frames, _IDENTITY_DIM)), pose], axis=1)
  hidden = latent @ world.face_weights + world.face_bias + rng.normal(0, 0.3, (num_frames, VISUAL_DIM))
  return np.maximum(hidden, 0).astype(np.float32), soft.astype(np.float32)


_FILE_KEYS = ('visual', 'visual_soft_labels', 'acoustic', 'wav')
_WORLD: _World | None = None
_OUTPUT: Path | None = None


def _init_worker(world: _World, output: Path, limit_threads: bool) -> None:
  global _WORLD, _OUTPUT
  _WORLD, _OUTPUT = world, output
  if limit_threads:
    # Parallelism is across utterances; BLAS threads on tiny matrices only contend (10x slower on a busy host).
    threadpoolctl.threadpool_limits(1)


def _make_utterance(task: tuple[int, int, str, str, str, str | None]) -> dict:
  """Generates one utterance from its own random stream, writes its files, returns its manifest record."""
  part, index, uid, speaker_name, emotion, split = task
  world, output = _WORLD, _OUTPUT
  config = world.config
  labelled = part == 0
  rng = np.random.default_rng((config.seed, part, index))
  speaker = world.speakers[speaker_name]
  text = make_text(rng, emotion, config.labelled_explicit if labelled else config.unlabelled_explicit,
                   config.misleading)
  signal = synthesise_voice(rng, speaker, emotion, _syllables(text))
  num_frames = max(1, round(len(signal) / SAMPLE_RATE * VISUAL_FPS))
  visual, soft = synthesise_face(rng, world, speaker, emotion, num_frames)
  acoustic = acoustic_features.extract_from_signal(signal, SAMPLE_RATE, ACOUSTIC_CONFIG)
  # Frame features in half precision keep the corpus small; soft labels stay float32 (they are targets).
  paths = {}
  for key, array in (('visual', visual.astype(np.float16)), ('soft_labels', soft),
                     ('acoustic', acoustic.astype(np.float16))):
    paths[key] = f'{key}/{uid}.npy'
    np.save(output / paths[key], array)
  if config.write_wavs:
    paths['wav'] = f'wav/{uid}.wav'
    soundfile.write(output / paths['wav'], signal, SAMPLE_RATE, subtype='PCM_16')
  return common.record(uid, text, label=emotion if labelled else None, speaker=speaker_name, session=speaker.session,
                       split=split, visual=paths['visual'], visual_soft_labels=paths['soft_labels'],
                       acoustic=paths['acoustic'], wav=paths.get('wav'))


def _tasks(world: _World) -> tuple[list, list]:
  """(part, index, id, speaker, emotion, split) of every labelled and every unlabelled utterance."""
  config = world.config
  rng = np.random.default_rng((config.seed, 3))
  labelled_speakers = [f'{s}{g}' for s in range(1, NUM_SESSIONS + 1) for g in 'FM']
  labelled = []
  for i in range(config.num_labelled):
    speaker = labelled_speakers[i % len(labelled_speakers)]
    emotion = EMOTIONS[rng.choice(len(EMOTIONS), p=LABELLED_PRIOR)]
    # Fold 9 of the IEMOCAP protocol, so that a 'given split' run has a speaker-independent test set.
    split = {'5F': 'valid', '5M': 'test'}.get(speaker, 'train')
    labelled.append((0, i, f'demo_{speaker}_{i:05d}', speaker, emotion, split))
  unlabelled_speakers = [name for name, s in world.speakers.items() if s.session is None]
  unlabelled = []
  for i in range(config.num_unlabelled):
    emotion = EMOTIONS[rng.integers(len(EMOTIONS))]
    unlabelled.append((1, i, f'demo_unlab_{i:05d}', unlabelled_speakers[i % len(unlabelled_speakers)], emotion,
                       'train'))
  return labelled, unlabelled


def generate(output: str | Path, config: DemoConfig = DemoConfig(), workers: int = 1) -> dict:
  """Writes the demo corpus to `output` (see the module doc); returns the contents of demo_info.json.

  Args:
    output: folder to create or fill (files of other ids already there are left alone).
    config: size, seed and difficulty.
    workers: processes (the result does not depend on it).
  """
  start = time.perf_counter()
  output = Path(output)
  for sub in ('visual', 'soft_labels', 'acoustic') + (('wav',) if config.write_wavs else ()):
    (output / sub).mkdir(parents=True, exist_ok=True)
  world = _make_world(config)
  labelled, unlabelled = _tasks(world)
  tasks = labelled + unlabelled
  if workers > 1:
    # 'spawn': the caller may have started JAX's threads, which fork would copy mid-flight.
    with multiprocessing.get_context('spawn').Pool(workers, _init_worker, (world, output, True)) as pool:
      records = pool.map(_make_utterance, tasks, chunksize=max(1, len(tasks) // (8 * workers)))
  else:
    _init_worker(world, output, False)
    with threadpoolctl.threadpool_limits(1):
      records = [_make_utterance(t) for t in tasks]
  common.write_manifest(records[:len(labelled)], output / 'labelled.jsonl')
  common.write_manifest(records[len(labelled):], output / 'unlabelled.jsonl')
  written = ['labelled.jsonl', 'unlabelled.jsonl'] + [r[k] for r in records for k in _FILE_KEYS if r[k]]
  info = dict(config=dataclasses.asdict(config), labels=list(EMOTIONS), soft_label_classes=list(FER_CLASSES),
              visual_dim=VISUAL_DIM, acoustic_dim=acoustic_features.feature_dim(ACOUSTIC_CONFIG),
              acoustic_config=dataclasses.asdict(ACOUSTIC_CONFIG), num_labelled=len(labelled),
              num_unlabelled=len(unlabelled), seconds=round(time.perf_counter() - start, 2),
              bytes=sum((output / name).stat().st_size for name in written))
  (output / 'demo_info.json').write_text(json.dumps(info, indent=1) + '\n')
  return info


# ---- Linear probes: how much each modality (and their fusion) tells about the label. ----


def _standardise(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  mean, std = train.mean(axis=0), train.std(axis=0) + 1e-6
  return (train - mean) / std, (test - mean) / std


def fit_logistic(x: np.ndarray, y: np.ndarray, num_classes: int, l2: float = 0.1, steps: int = 300,
                 learning_rate: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
  """Multinomial logistic regression by full-batch gradient descent (x standardised): (weights, bias)."""
  weights = np.zeros((x.shape[1], num_classes))
  bias = np.zeros(num_classes)
  onehot = np.eye(num_classes)[y]
  for _ in range(steps):
    logits = x @ weights + bias
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    grad = (p - onehot) / len(x)
    weights -= learning_rate * (x.T @ grad + l2 * weights)
    bias -= learning_rate * grad.sum(axis=0)
  return weights, bias


def _words(text: str) -> list[str]:
  return re.findall(r"[a-z']+", text.lower())


def _bag_of_words(texts: Sequence[str], vocabulary: dict[str, int]) -> np.ndarray:
  out = np.zeros((len(texts), len(vocabulary)))
  for i, text in enumerate(texts):
    for word in _words(text):
      if word in vocabulary:
        out[i, vocabulary[word]] = 1
  return out


def probe_accuracies(directory: str | Path, manifest: str = 'labelled.jsonl') -> dict[str, float]:
  """Leave-one-session-out accuracy of logistic regressions on each modality and on their concatenation.

  Inputs: bag of words (text), mean-pooled visual features, mean-pooled acoustic features.
  Returns {'text', 'visual', 'acoustic', 'fusion'} -> mean accuracy over the held-out sessions.
  """
  directory = Path(directory)
  records = [r for r in common.read_manifest(directory / manifest) if r['label'] is not None]
  labels = np.array([EMOTIONS.index(r['label']) for r in records])
  sessions = np.array([r['session'] for r in records])
  pooled = {key: np.stack([np.load(directory / r[key]).astype(np.float64).mean(axis=0) for r in records])
            for key in ('visual', 'acoustic')}
  texts = [r['text'] for r in records]
  scores = {name: [] for name in ('text', 'visual', 'acoustic', 'fusion')}
  with threadpoolctl.threadpool_limits(1):  # small matrices: threads only contend
    for held_out in sorted(set(sessions)):
      train, test = sessions != held_out, sessions == held_out
      words = sorted({w for i in np.flatnonzero(train) for w in _words(texts[i])})
      bow = _bag_of_words(texts, {w: i for i, w in enumerate(words)})
      inputs = {'text': bow, **pooled}
      inputs['fusion'] = np.concatenate([inputs['text'], inputs['visual'], inputs['acoustic']], axis=1)
      for name, x in inputs.items():
        x_train, x_test = _standardise(x[train], x[test])
        weights, bias = fit_logistic(x_train, labels[train], len(EMOTIONS))
        scores[name].append(float(np.mean(np.argmax(x_test @ weights + bias, axis=1) == labels[test])))
  return {name: float(np.mean(values)) for name, values in scores.items()}


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  parser.add_argument('--output', required=True, help='folder to write the corpus to')
  defaults = DemoConfig()
  parser.add_argument('--num_labelled', type=int, default=defaults.num_labelled)
  parser.add_argument('--num_unlabelled', type=int, default=defaults.num_unlabelled)
  parser.add_argument('--seed', type=int, default=defaults.seed)
  parser.add_argument('--workers', type=int, default=min(4, os.cpu_count() or 1))
  parser.add_argument('--write_wavs', action='store_true', help='also write the synthesised audio')
  parser.add_argument('--probe', action='store_true', help='report single-modality vs fusion accuracies')
  args = parser.parse_args(argv)
  config = DemoConfig(num_labelled=args.num_labelled, num_unlabelled=args.num_unlabelled, seed=args.seed,
                      write_wavs=args.write_wavs)
  info = generate(args.output, config, workers=args.workers)
  print(f'wrote {info["num_labelled"]} labelled and {info["num_unlabelled"]} unlabelled utterances to {args.output} '
        f'in {info["seconds"]:.1f} s ({info["bytes"] / 2 ** 20:.1f} MiB)')
  if args.probe:
    accuracies = probe_accuracies(args.output)
    print('linear-probe accuracy (leave-one-session-out): ' +
          ', '.join(f'{k} {v:.3f}' for k, v in accuracies.items()))


if __name__ == '__main__':
  main()
