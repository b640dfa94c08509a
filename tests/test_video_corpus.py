"""Clips from videos and subtitles (data_prep/corpora/video.py): cutting, faces, audio, resuming, bad media."""

import json
import os

import numpy as np
import pytest
import soundfile

from data_prep import subtitles
from data_prep.corpora import video as video_corpus
from tests import media_helpers

FPS = 10
SECONDS = 4
SIZE = (300, 400)
AUDIO_RATE = 44100
# The face is on screen for the first two seconds, then the frames are blank.
CUES = '''1
00:00:00,000 --> 00:00:01,000
<i>Hello</i> there,
{\\an8}how are you?

2
00:00:01,000 --> 00:00:01,900
I am fine &amp; happy.

3
00:00:01,500 --> 00:00:02,000
- Really?

4
00:00:03,000 --> 00:00:04,000
Nobody is here.
'''


def write_clip_video(path, *, audio=True, seconds=SECONDS):
  frames = media_helpers.face_frames(seconds * FPS, SIZE, blank=lambda i: i >= 2 * FPS, left=lambda i: 5 * i)
  signal = media_helpers.sine(seconds, AUDIO_RATE, hz=220.0) if audio else None
  media_helpers.write_video(path, frames, FPS, audio=signal, audio_rate=AUDIO_RATE)


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
  root = tmp_path_factory.mktemp('videos')
  (root / 'videos').mkdir()
  (root / 'subtitles').mkdir()
  write_clip_video(root / 'videos' / 'episode1.mp4')
  (root / 'subtitles' / 'episode1.srt').write_text(CUES)
  return root


def test_subtitles_lose_their_markup_and_keep_their_lines(corpus):
  cues = subtitles.read_cues(corpus / 'subtitles' / 'episode1.srt')
  assert [c.text for c in cues] == ['Hello there, how are you?', 'I am fine & happy.', '- Really?', 'Nobody is here.']
  assert [c.line for c in cues] == [2, 7, 11, 15] and cues[1].start == 1.0 and cues[1].end == 1.9
  assert subtitles.overlapping(cues) == {1, 2}


def test_one_clip_per_subtitle_line_with_audio_and_face_frames(corpus):
  output = corpus / 'out' / 'clips.jsonl'
  summary = video_corpus.build_corpus(str(corpus / 'videos'), str(corpus / 'subtitles'), str(output),
                                      progress=False)
  lines = [json.loads(line) for line in output.read_text().splitlines()]
  # The last cue shows no face: dropped, as the paper keeps only clips with the speaker's face.
  assert [line['text'] for line in lines] == ['Hello there, how are you?', 'I am fine & happy.', '- Really?']
  assert summary['clips_kept'] == 3 and summary['clips_dropped'] == {'no face found': 1}
  assert summary['overlapping_cues'] == 2
  assert summary['resampled_audio'] == {str(corpus / 'videos' / 'episode1.mp4'): '44100 Hz -> 16000 Hz'}
  for line in lines:
    assert line['subtitle'].startswith(str(corpus / 'subtitles' / 'episode1.srt') + ':')
    samples, rate = soundfile.read(output.parent / line['wav'])
    assert rate == 16000 and abs(len(samples) / rate - (line['end'] - line['start'])) < 0.05
    visual = np.load(output.parent / line['visual'])
    soft = np.load(output.parent / line['visual_soft_labels'])
    assert visual.shape[1] == 128 and len(visual) == len(soft) == line['face_frames'] >= 4
    np.testing.assert_allclose(soft.sum(-1), 1.0, atol=1e-5)
  features = json.loads((corpus / 'out' / 'clips.jsonl.features.json').read_text())
  assert features['visual']['dim'] == 128 and features['audio']['sample_rate'] == 16000

  # A second run reuses every finished video.
  wav = output.parent / lines[0]['wav']
  before = os.path.getmtime(wav)
  video_corpus.build_corpus(str(corpus / 'videos'), str(corpus / 'subtitles'), str(output), progress=False)
  assert os.path.getmtime(wav) == before
  assert output.read_text().count('\n') == 3


def test_faceless_clips_are_kept_on_request_with_one_neutral_zero_frame(corpus):
  output = corpus / 'faceless' / 'clips.jsonl'
  video_corpus.build_corpus(str(corpus / 'videos'), str(corpus / 'subtitles'), str(output), progress=False,
                            options=video_corpus.Options(keep_faceless=True))
  last = json.loads(output.read_text().splitlines()[-1])
  assert last['text'] == 'Nobody is here.' and last['face_frames'] == 0
  np.testing.assert_array_equal(np.load(output.parent / last['visual']), 0.0)
  assert np.load(output.parent / last['visual_soft_labels'])[0, 0] == 1.0  # neutral


def test_bad_media_and_subtitles_are_named_and_skippable(tmp_path):
  videos, subs = tmp_path / 'videos', tmp_path / 'subtitles'
  videos.mkdir()
  subs.mkdir()
  write_clip_video(videos / 'good.mp4')
  (subs / 'good.srt').write_text('1\n00:00:00,000 --> 00:00:01,000\nHi.\n\n'
                                 '2\n00:00:01,000 --> 00:00:02,000\n<i></i>\n\n'
                                 '3\n00:00:03,500 --> 00:00:09,000\nToo late.\n')
  write_clip_video(videos / 'silent.mp4', audio=False)
  (subs / 'silent.srt').write_text(CUES)
  (videos / 'broken.mp4').write_bytes(b'not a video at all')
  (subs / 'broken.srt').write_text(CUES)
  write_clip_video(videos / 'untitled.mp4', seconds=1)
  output = tmp_path / 'clips.jsonl'
  with pytest.raises(ValueError) as error:
    video_corpus.build_corpus(str(videos), str(subs), str(output), progress=False)
  message = str(error.value)
  for expected in (f'{subs / "good.srt"}:6: empty subtitle text',
                   f'{subs / "good.srt"}:10: the cue ends at 9.000 s, after the end of {videos / "good.mp4"}',
                   f'{videos / "silent.mp4"}: the video has no audio track',
                   f'{videos / "broken.mp4"}: {videos / "broken.mp4"}: cannot read this media file',
                   f'{videos / "untitled.mp4"}: no subtitle file untitled.srt or .vtt'):
    assert expected in message, (expected, message)
  assert not output.exists()

  summary = video_corpus.build_corpus(str(videos), str(subs), str(output), on_error='skip', progress=False)
  assert [json.loads(line)['text'] for line in output.read_text().splitlines()] == ['Hi.']
  assert len(summary['skipped']) == 5
