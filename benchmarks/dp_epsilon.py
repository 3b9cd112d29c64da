"""The privacy figures the README quotes, from fedcls's own accounting functions: the epsilon a DP-SGD
site of n samples spends over a run, the noise a target epsilon needs, and central DP's epsilon per
noise multiplier over the rounds.

    python benchmarks/dp_epsilon.py [n] [rounds] [local_epochs]   (defaults: 320 20 2, the study's site)
"""

import sys

from fedcls.algorithms.dpsgd import epoch_steps, epsilon_of, noise_for_target
from fedcls.algorithms.privacy import epsilon_after
from fedcls.config import compose


def main(n: int = 320, rounds: int = 20, epochs: int = 2) -> None:
    cfg = compose([f"rounds={rounds}", f"local_epochs={epochs}"])
    per_epoch = epoch_steps(n, cfg.batch_size)
    steps = rounds * epochs * per_epoch
    print(f"DP-SGD site: {n} samples, batch {cfg.batch_size} (q = 1/{per_epoch}), {steps} steps, delta 1e-5")
    for z in (0.5, 1.0, 2.0):
        print(f"  z = {z:<4g} epsilon {epsilon_of([(z, 1 / per_epoch, steps)], 1e-5):.1f}")
    for target in (1, 8):
        z = noise_for_target(compose([f"rounds={rounds}", f"local_epochs={epochs}",
                                      f"privacy.target_epsilon={target}"]), n)
        print(f"  target epsilon {target}: z = {z:.2f}")
    print(f"central DP: {rounds} releases, no amplification, delta 1e-5")
    for z in (0.1, 0.3, 1.0):
        print(f"  z = {z:<4g} epsilon {epsilon_after(rounds, z, 1e-5):.1f}")


if __name__ == "__main__":
    main(*map(int, sys.argv[1:]))
