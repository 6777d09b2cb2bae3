"""SAELens's TopK training step at GPT-2-small scale, for the ratio in the README (not part of CI).

Run with the venv scripts/check_saelens.sh creates, next to `cargo bench --bench sae` (section 1
trains the same SAE on the same shapes):

    OMP_WAIT_POLICY=PASSIVE .venv-saelens/bin/python scripts/bench_saelens.py

Times what SAELens's `SAETrainer._train_step` does per batch: `training_forward_pass` of a
`TopKTrainingSAE` (d_in 768, d_sae 16384, k 32; AuxK on, its default
`rescale_acts_by_decoder_norm`), the dead-latent bookkeeping, backward, gradient clipping and an
Adam step, on batches of 4096 random activations. Prints the fastest step of several. (SAELens's
`use_sparse_activations=True` fails in backward on CPU with torch 2.13: `aten::view` has no
SparseCPU kernel.)
"""
import time

import torch
import sae_lens as sl
from sae_lens.saes.sae import TrainStepInput

D_IN, D_SAE, K, BATCH = 768, 16384, 32, 4096


def step_secs(steps: int = 4) -> float:
    torch.manual_seed(0)
    sae = sl.TopKTrainingSAE(sl.TopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K))
    opt = torch.optim.Adam(sae.parameters(), lr=4e-4, betas=(0.9, 0.999))
    x = torch.randn(2 * BATCH, D_IN)
    since_fired = torch.zeros(D_SAE)
    best = float("inf")
    for step in range(steps + 1):
        batch = x[(step % 2) * BATCH:(step % 2 + 1) * BATCH]
        start = time.perf_counter()
        out = sae.training_forward_pass(TrainStepInput(sae_in=batch, coefficients={}, dead_neuron_mask=since_fired > 1000, n_training_steps=step, is_logging_step=False))
        with torch.no_grad():
            fired = out.feature_acts.bool().float().sum(-2).bool()
            if fired.is_sparse:
                fired = fired.to_dense()
            since_fired += 1
            since_fired[fired] = 0
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        if step > 0:  # the first step warms up
            best = min(best, time.perf_counter() - start)
    return best


if __name__ == "__main__":
    torch.set_num_threads(2)
    print(f"sae-lens {sl.__version__}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    s = step_secs()
    print(f"SAELens TopK training step: {s:.3f} s/step = {BATCH / s:.0f} tokens/s")
