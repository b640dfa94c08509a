"""A PyTorch reference of the MEmoBERT pretraining step, for side-by-side speed comparisons.

Written from the spec and from memobert_jax/model, not with transformers: the same
post-LN BERT encoder over the concatenated [text | visual | acoustic] embeddings,
the same heads (MLM logits at the gathered positions only, tied decoder; frame
regression tied to the input projection; visual soft-label classification), the
same losses, AdamW with the same hyper-parameters, decay mask, global-norm
clipping and linear schedule, and dropout everywhere the JAX model has it.
Attention uses `torch.nn.functional.scaled_dot_product_attention` (PyTorch's
fastest CPU path, with its own dropout) in eager mode.

`encoder='transformers'` swaps the encoder layers for transformers' `BertEncoder` (its SDPA attention), the
UNITER-style stack the authors' code builds: BERT's encoder over the concatenated embeddings, with the same
frame embedders and heads around it. It is timed only (its parameter names are transformers').

Parameter names follow the JAX model's paths, so `jax_to_torch_state` copies a JAX
state into it; `--check` verifies on the tiny config that both compute the same
losses and gradients without dropout:

  python -m benchmarks.torch_reference --check

The timed comparison itself is driven by `benchmarks/bench_step.py --torch`.
"""

import argparse
import math
import re
import sys

import numpy as np
import torch
import torch.nn.functional as F
from ml_collections import ConfigDict
from torch import nn

def _layer_norm(size: int, cfg: ConfigDict) -> nn.LayerNorm:
  return nn.LayerNorm(size, eps=cfg.layer_norm_eps)


class TextEmbeddings(nn.Module):

  def __init__(self, cfg: ConfigDict):
    super().__init__()
    self.word = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
    self.position = nn.Embedding(cfg.max_text_positions, cfg.hidden_size)
    self.token_type = nn.Embedding(2, cfg.hidden_size)
    self.norm = _layer_norm(cfg.hidden_size, cfg)
    self.dropout = nn.Dropout(cfg.dropout_rate)

  def forward(self, ids: torch.Tensor) -> torch.Tensor:
    x = self.word(ids) + self.position.weight[:ids.shape[1]] + self.token_type.weight[0]
    return self.dropout(self.norm(x))


class FrameEmbeddings(nn.Module):

  def __init__(self, cfg: ConfigDict, feature_dim: int, max_positions: int):
    super().__init__()
    self.mask_vector = nn.Parameter(torch.zeros(feature_dim))
    self.projection = nn.Linear(feature_dim, cfg.hidden_size)
    self.projection_norm = _layer_norm(cfg.hidden_size, cfg)
    self.position = nn.Embedding(max_positions, cfg.hidden_size)
    self.norm = _layer_norm(cfg.hidden_size, cfg)
    self.dropout = nn.Dropout(cfg.dropout_rate)

  def forward(self, frames: torch.Tensor, masked: torch.Tensor, type_embedding: torch.Tensor) -> torch.Tensor:
    masked = masked[..., None]
    frames = frames.masked_fill(masked, 0.0) + masked * self.mask_vector
    x = self.projection_norm(self.projection(frames))
    x = x + self.position.weight[:frames.shape[1]] + type_embedding
    return self.dropout(self.norm(x))


class TransformerLayer(nn.Module):

  def __init__(self, cfg: ConfigDict):
    super().__init__()
    self.num_heads = cfg.num_heads
    self.attention_dropout = cfg.attention_dropout_rate
    self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size)  # fused, as in the JAX model
    self.out = nn.Linear(cfg.hidden_size, cfg.hidden_size)
    self.attention_norm = _layer_norm(cfg.hidden_size, cfg)
    self.intermediate = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
    self.output = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
    self.output_norm = _layer_norm(cfg.hidden_size, cfg)
    self.dropout = nn.Dropout(cfg.dropout_rate)

  def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    b, length, hidden = x.shape
    # [B, L, 3, heads, head_dim] -> three [B, heads, L, head_dim]
    q, k, v = self.qkv(x).view(b, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    context = F.scaled_dot_product_attention(q, k, v, attn_mask=valid[:, None, None, :],
                                             dropout_p=self.attention_dropout if self.training else 0.0)
    attended = self.out(context.transpose(1, 2).reshape(b, length, hidden))
    x = self.attention_norm(x + self.dropout(attended))
    return self.output_norm(x + self.dropout(self.output(F.gelu(self.intermediate(x)))))


class Transform(nn.Module):
  """LN(GELU(W h + b))."""

  def __init__(self, cfg: ConfigDict, size: int):
    super().__init__()
    self.dense = nn.Linear(cfg.hidden_size, size)
    self.norm = _layer_norm(size, cfg)

  def forward(self, h: torch.Tensor) -> torch.Tensor:
    return self.norm(F.gelu(self.dense(h)))


class BiasHead(nn.Module):
  """A transform and an output bias; the output weight is tied to another module's."""

  def __init__(self, cfg: ConfigDict, out_size: int):
    super().__init__()
    self.transform = Transform(cfg, cfg.hidden_size)
    self.bias = nn.Parameter(torch.zeros(out_size))


class ClassificationHead(nn.Module):

  def __init__(self, cfg: ConfigDict, num_classes: int):
    super().__init__()
    self.transform = Transform(cfg, cfg.hidden_size)
    self.out = nn.Linear(cfg.hidden_size, num_classes)

  def forward(self, h: torch.Tensor) -> torch.Tensor:
    return self.out(self.transform(h))


ENCODERS = ('project', 'transformers')


def _bert_encoder(cfg: ConfigDict) -> nn.Module:
  from transformers import BertConfig  # Deferred: only the UNITER-style reference needs transformers.
  from transformers.models.bert.modeling_bert import BertEncoder
  return BertEncoder(BertConfig(
      vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
      num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size, hidden_act='gelu',
      hidden_dropout_prob=cfg.dropout_rate, attention_probs_dropout_prob=cfg.attention_dropout_rate,
      layer_norm_eps=cfg.layer_norm_eps, attn_implementation='sdpa'))


class TorchMEmoBERT(nn.Module):
  """The JAX MEmoBERT (memobert_jax/model/memobert.py) in PyTorch, pretraining heads only."""

  def __init__(self, cfg: ConfigDict, encoder: str = 'project'):
    super().__init__()
    if encoder not in ENCODERS:
      raise ValueError(f'unknown torch encoder {encoder!r}; known: {ENCODERS}')
    self.text_embeddings = TextEmbeddings(cfg)
    self.visual_embeddings = FrameEmbeddings(cfg, cfg.visual_dim, cfg.max_visual_positions)
    self.acoustic_embeddings = FrameEmbeddings(cfg, cfg.acoustic_dim, cfg.max_acoustic_positions)
    self.acoustic_type = nn.Parameter(torch.zeros(cfg.hidden_size))
    self.bert_encoder = encoder == 'transformers'
    self.layers = (_bert_encoder(cfg) if self.bert_encoder
                   else nn.ModuleList(TransformerLayer(cfg) for _ in range(cfg.num_layers)))
    self.mlm_head = BiasHead(cfg, cfg.vocab_size)
    self.visual_regression_head = BiasHead(cfg, cfg.visual_dim)
    self.visual_classification_head = ClassificationHead(cfg, cfg.num_visual_classes)
    self.acoustic_regression_head = BiasHead(cfg, cfg.acoustic_dim)
    for name, p in self.named_parameters():
      if p.dim() > 1 or name.endswith(('mask_vector', 'acoustic_type')):
        nn.init.normal_(p, std=cfg.init_std)

  def encode(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    x = torch.cat([
        self.text_embeddings(batch['text_ids']),
        self.visual_embeddings(batch['visual'], batch['visual_masked'], self.text_embeddings.token_type.weight[1]),
        self.acoustic_embeddings(batch['acoustic'], batch['acoustic_masked'], self.acoustic_type),
    ], dim=1)
    valid = torch.cat([batch['text_mask'], batch['visual_mask'], batch['acoustic_mask']], dim=1)
    if self.bert_encoder:
      # transformers' additive mask: 0 where attended, the dtype's minimum on padding.
      additive = torch.zeros(valid.shape, dtype=x.dtype).masked_fill(~valid, torch.finfo(x.dtype).min)
      return self.layers(x, attention_mask=additive[:, None, None, :]).last_hidden_state
    for layer in self.layers:
      x = layer(x, valid)
    return x

  def loss(self, batch: dict[str, torch.Tensor], task: str) -> torch.Tensor:
    """The task's mean loss over its targets (tasks.py: loss_sum / count)."""
    hidden = self.encode(batch)
    text_len, visual_len = batch['text_ids'].shape[1], batch['visual'].shape[1]
    if task == 'mlm':
      positions = batch['mlm_positions'].long()
      picked = torch.gather(hidden[:, :text_len], 1, positions[..., None].expand(-1, -1, hidden.shape[-1]))
      head = self.mlm_head
      logits = head.transform(picked) @ self.text_embeddings.word.weight.T + head.bias
      losses = F.cross_entropy(logits.flatten(0, 1), batch['mlm_targets'].long().flatten(), reduction='none')
      weights = batch['mlm_weights'].flatten()
      return (losses * weights).sum() / weights.sum().clamp(min=1.0)
    if task == 'visual_kl':
      log_q = F.log_softmax(self.visual_classification_head(hidden[:, text_len:text_len + visual_len]), dim=-1)
      p = batch['visual_soft_labels']
      per_frame = (torch.xlogy(p, p) - p * log_q).mean(-1)
      weights = batch['visual_target_mask'].float()
      return (per_frame * weights).sum() / weights.sum().clamp(min=1.0)
    modality = task.split('_')[0]
    frames = hidden[:, text_len:text_len + visual_len] if modality == 'visual' else hidden[:, text_len + visual_len:]
    head = getattr(self, f'{modality}_regression_head')
    projection = getattr(self, f'{modality}_embeddings').projection
    prediction = head.transform(frames) @ projection.weight + head.bias
    per_frame = (prediction - batch[f'{modality}_targets']).square().mean(-1)
    weights = batch[f'{modality}_target_mask'].float()
    return (per_frame * weights).sum() / weights.sum().clamp(min=1.0)


def _decays(name: str) -> bool:
  # As optimizer.py: no decay on biases and LayerNorm parameters (every LayerNorm here is a '*norm' module).
  module, _, leaf = name.rpartition('.')
  return not (leaf == 'bias' or module.lower().endswith('norm'))  # transformers names its LayerNorms 'LayerNorm'


class TorchTrainer:
  """One optimizer step per call: forward, backward, global-norm clip, AdamW, linear schedule."""

  def __init__(self, model_cfg: ConfigDict, optim_cfg: ConfigDict, seed: int = 0, encoder: str = 'project'):
    torch.manual_seed(seed)
    self.model = TorchMEmoBERT(model_cfg, encoder)
    self.model.train()
    named = list(self.model.named_parameters())
    groups = [{'params': [p for n, p in named if _decays(n)], 'weight_decay': optim_cfg.weight_decay},
              {'params': [p for n, p in named if not _decays(n)], 'weight_decay': 0.0}]
    self.optimizer = torch.optim.AdamW(groups, lr=optim_cfg.learning_rate, betas=(optim_cfg.b1, optim_cfg.b2),
                                       eps=optim_cfg.eps)
    warmup, total = max(optim_cfg.warmup_steps, 1), optim_cfg.total_steps

    def factor(step: int) -> float:
      if step < warmup:
        return step / warmup
      return max(0.0, (total - step) / max(total - warmup, 1))

    self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)
    self.clip_norm = optim_cfg.clip_norm

  def step(self, batch: dict[str, torch.Tensor], task: str) -> float:
    self.optimizer.zero_grad(set_to_none=True)
    loss = self.model.loss(batch, task)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_norm)
    self.optimizer.step()
    self.schedule.step()
    return loss.detach()


def to_torch(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
  """One micro-batch [b, ...] of numpy arrays (as the pipeline builds them) as tensors."""
  return {k: torch.from_numpy(np.array(v)) for k, v in batch.items()}


def _jax_name(torch_name: str) -> str:
  """The JAX parameter path of a torch parameter name (this module mirrors memobert_jax/model's names)."""
  name = re.sub(r'^layers\.(\d+)\.(qkv|out)\.', r'encoder.layers.\1.attention.\2.', torch_name)
  name = re.sub(r'^layers\.', 'encoder.layers.', name)
  module, _, leaf = name.rpartition('.')
  if leaf == 'weight':
    if module.endswith('norm'):
      leaf = 'scale'
    elif module.endswith(('word', 'position', 'token_type')):
      leaf = 'embedding'
    else:
      leaf = 'kernel'
  return f'{module}.{leaf}' if module else leaf


def jax_to_torch_state(params, model: TorchMEmoBERT) -> dict[str, torch.Tensor]:
  """A JAX MEmoBERT parameter state (nnx.State) as the torch model's state dict.

  A JAX Dense kernel has shape in_shape + out_shape; flattened to [in, out] and transposed it is the
  torch Linear weight [out, in] (the fused QKV output axes (3, heads, head_dim) flatten in the order the
  torch layer splits them).
  """
  from flax import nnx  # Deferred: the timed torch path needs no JAX.
  flat = {'.'.join(map(str, path)): np.asarray(v[...]) for path, v in nnx.to_flat_state(params)}
  state = {}
  for name, tensor in model.state_dict().items():
    value = flat[_jax_name(name)]
    if _jax_name(name).endswith('kernel'):
      value = value.reshape(tensor.shape[1], tensor.shape[0]).T
    state[name] = torch.from_numpy(np.array(value).reshape(tensor.shape)).to(tensor.dtype)
  return state


def check_parity() -> float:
  """Tiny config, no dropout: JAX and torch losses and parameter gradients agree. Returns the worst relative error."""
  import jax
  from flax import nnx

  from benchmarks import bench_step
  from memobert_jax.model import MEmoBERT
  from memobert_jax.training import setup
  from memobert_jax.training.tasks import TASKS

  config = bench_step.make_config('tiny', batch=4)
  config.model.dropout_rate = config.model.attention_dropout_rate = 0.0
  jax_model = MEmoBERT(config.model, rngs=nnx.Rngs(params=0))
  graphdef, params = nnx.split(jax_model, nnx.Param)
  torch_model = TorchMEmoBERT(config.model).double()
  torch_model.load_state_dict(jax_to_torch_state(params, torch_model))
  torch_model.eval()
  worst = 0.0
  for task in bench_step.TASKS:
    batch = {k: v[0] for k, v in bench_step.host_batch(config, task, np.random.default_rng(1)).items()}

    def jax_loss(p):
      total, count, _ = TASKS[task](nnx.merge(graphdef, p), batch, True, None)
      return total / count

    # Compiled as the training step is, with the preset's XLA options (its matmul library).
    loss, grads = jax.jit(jax.value_and_grad(jax_loss), compiler_options=setup.compiler_options(config))(params)
    torch_batch = {k: (t.double() if t.is_floating_point() else t) for k, t in to_torch(batch).items()}
    torch_model.zero_grad()
    torch_loss = torch_model.loss(torch_batch, task)
    torch_loss.backward()
    torch_loss = float(torch_loss.detach())
    errors = {'loss': abs(torch_loss - float(loss)) / abs(float(loss))}
    expected_grads = jax_to_torch_state(grads, torch_model)
    for name, p in torch_model.named_parameters():
      g = p.grad if p.grad is not None else torch.zeros_like(p)
      expected = expected_grads[name]
      errors[name] = float((g - expected).abs().max() / expected.abs().max().clamp(min=1e-12))
    name, error = max(errors.items(), key=lambda kv: kv[1])
    print(f'{task}: loss jax {float(loss):.6f} torch {torch_loss:.6f}; worst relative error {error:.2e} '
          f'({name})')
    worst = max(worst, error)
  return worst


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--check', action='store_true', help='check JAX/torch parity on the tiny config')
  args = parser.parse_args(argv)
  if not args.check:
    parser.error('nothing to do: pass --check, or time with python -m benchmarks.bench_step --torch')
  worst = check_parity()
  print(f'worst relative error {worst:.2e}')
  sys.exit(0 if math.isfinite(worst) and worst < 1e-4 else 1)


if __name__ == '__main__':
  main(sys.argv[1:])
