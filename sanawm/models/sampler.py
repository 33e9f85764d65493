"""Torch reference of the released streaming sampler (sana-wm-streaming.md 1.3-1.5, 2.5), on the step modules.

Per chunk c: x = the chunk's slice of the full-clip noise (frame 0 of chunk 0 replaced by the clean first-frame
latent); for each schedule timestep t_i run the step with the committed state read-only, per-frame Euler
x <- x + (sigma_{i+1} - sigma_i) * v with the condition frame held clean; then one t = 0 pass on the clean
chunk whose state outputs are committed (GDN states and tails; this chunk's softmax K/V are stored per chunk and
windows are assembled with ``cfg.window_chunks``). Chunks that no later window can reach are dropped.
"""

from __future__ import annotations

import torch

from ..config import StreamingSchedule
from .generator_step import GeneratorStep, initial_state, window_inputs

_KV = ("k", "v", "cam_k", "cam_v")


class StreamingSampler:
    """Drives ``GeneratorStep`` modules (or anything with the same call contract, e.g. an exported program)."""

    def __init__(self, first: GeneratorStep, next_: GeneratorStep, schedule: StreamingSchedule | None = None):
        self.steps = {True: first, False: next_}
        self.cfg = first.model.cfg
        self.schedule = schedule or StreamingSchedule()

    def _call(self, step: GeneratorStep, inputs: dict) -> dict:
        with torch.no_grad():
            outs = step(*[inputs[n] for n in step.input_names])
        return dict(zip(step.output_names, outs))

    def sample(
        self,
        first_latent: torch.Tensor,
        noise: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        camera: torch.Tensor,
        plucker: torch.Tensor,
    ) -> torch.Tensor:
        """Generate a clip.

        Args:
            first_latent: ``[1, C, 1, H, W]`` clean latent of the first frame.
            noise: ``[1, C, T, H, W]`` full-clip noise (T = first_chunk_size + k * chunk_size).
            text: ``[1, L, Ct]`` or ``[1, 1, L, Ct]``; text_mask ``[1, L]``.
            camera: ``[1, T, 20]``; plucker ``[1, 48, T, H, W]``.
        Returns:
            clean latents ``[1, C, T, H, W]``.
        """
        cfg, sched = self.cfg, self.schedule
        if noise.shape[0] != 1:
            raise ValueError(f"the streaming step is batch 1; got noise batch {noise.shape[0]}")
        if text.dim() == 4:
            text = text[:, 0]
        T = noise.shape[2]
        state = initial_state(cfg, True)
        chunk_kv: dict[int, list] = {}
        done = []
        sigmas = sched.sigmas
        for c, (s, e) in enumerate(cfg.chunk_bounds(T)):
            first = c == 0
            step = self.steps[first]
            n = e - s
            x = noise[:, :, s:e].float()
            cond = torch.zeros(n, dtype=torch.bool)
            if first:
                x = torch.cat([first_latent[:, :, :1].float(), x[:, :, 1:]], dim=2)
                cond[0] = True
            base = {
                "frame_index": torch.arange(s, e),
                "text": text.float(),
                "text_mask": text_mask.float(),
                "camera": camera[:, s:e].float(),
                "plucker": plucker[:, :, s:e].float(),
                **state,
            }
            if not first:
                base.update(window_inputs(cfg, chunk_kv, c))
            keep = cond.view(1, 1, n, 1, 1)
            for i, t in enumerate(sched.timesteps):
                tvec = torch.where(cond, 0.0, float(t)).view(1, n)
                v = self._call(step, dict(base, latents=x, timestep=tvec))["velocity"]
                dt = torch.where(cond, 0.0, sigmas[i + 1] - sigmas[i]).view(1, 1, n, 1, 1)
                x = x + dt * v
                if first:  # hold the condition frame exactly clean
                    x = torch.where(keep, torch.cat([first_latent[:, :, :1].float(), x[:, :, 1:]], 2), x)
            outs = self._call(step, dict(base, latents=x, timestep=torch.zeros(1, n)))  # cache-write pass
            state = {step.io.state_map[k]: v for k, v in outs.items() if k in step.io.state_map}
            chunk_kv[c] = [
                {nm: outs[f"b{i}.{nm}_chunk"] for nm in _KV} if cfg.is_softmax_block(i) else None
                for i in range(cfg.num_layers)
            ]
            needed = set(cfg.window_chunks(c + 1))
            chunk_kv = {d: kv for d, kv in chunk_kv.items() if d in needed}
            done.append(x)
        return torch.cat(done, dim=2)
