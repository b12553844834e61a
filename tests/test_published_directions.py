"""Published directions of the poisoning literature, reproduced on our data (digits, 20 clients, 20%
attackers, the default bench preset's local training). Each test compares whole FedAvg runs of the
library and can fail: a direction that does not hold here is a finding, not a test.

Measured when written (seed 0; accuracy or backdoor success at the end of the run):

* Shejwalkar and Houmansadr (NDSS 2021): min-max and min-sum break Krum and trimmed mean more than
  ALIE does. Dirichlet(0.3), 12 rounds: Krum 0.456 / 0.456 vs ALIE 0.814; trimmed mean 0.739 / 0.736
  vs 0.794. (IID, 20 rounds: Krum 0.878 / 0.869 vs 0.944; trimmed mean 0.944 all three: a tie.)
* Cao et al. (NDSS 2021, FLTrust) and Nguyen et al. (USENIX Security 2022, FLAME) against the
  scaled backdoor (model replacement, ``Backdoor(target=0, fraction=0.3)``), 12 rounds, seed 0:

  - corner trigger (the default, bottom-right 2x2, where BadNets puts its MNIST pattern),
    Dirichlet(0.3): mean 0.98, FLTrust 0.21, median 0.03, FLAME 0.0 (0.66 clustering updates,
    below). IID: mean 0.98, FLTrust 0.003, median 0.0, FLAME 0.0.
  - centre trigger (3x3 on pixels that carry ink in most digit images), Dirichlet(0.3): mean 0.99,
    FLTrust 0.006, median 0.04, FLAME 0.07. (A 2x2 centre trigger is hardly learned even under the
    mean, 0.32, so it compares nothing.)

  The papers' "the coordinate-wise median fails against the scaling attack" does not reproduce on
  digits in any setting tried (success at the end of 12 or 30 rounds): IID, Dirichlet(0.5) (label
  skew 0.45, close to FLTrust's "bias 0.5" sampling, 0.41 on this data) and Dirichlet(0.3); MLP and
  CNN; corner, 2x2 or 3x3 centre trigger; 20% attackers (MLP and CNN) or 30% (MLP): median <= 0.09.
  The median filters by rank, so the boost buys the attackers nothing; on the corner trigger's input
  weights, which honest images leave at zero gradient, it is exactly an honest 0. It lets some in
  only at 40% attackers (corner, 30 rounds: IID 0.25, Dirichlet 0.5 0.39, Dirichlet 0.3 0.35), where
  FLTrust lets in more (0.65, 0.71, 0.92), or with a 4x4 centre trigger, a quarter of the image and
  not a paper's (30 rounds, 20%, Dirichlet 0.3 and 0.5: median 0.28, 0.31; FLTrust 0.13, 0.16;
  FLAME 0.68, 0.64; mean 1.0, 0.98): the nearest to the papers' direction found, and the median
  only half fails. FLTrust is the weaker of the two against the corner trigger: 0.13-0.32 at 20%
  attackers (30 rounds, non-IID, MLP and CNN) and 0.65 at 30% on Dirichlet(0.3) (median 0.07). It
  averages what passes its cosine gate, and the attackers' corner weights, which no honest update
  opposes, pass at their share. Against the 2x2 and 3x3 centre triggers it keeps success at 0.0.

  FLAME clustering the local *models* ``G + u_i`` (its default, ``cluster_on="models"``, as the
  paper's Algorithm 1 and FLPoison's FedAvg mode do) keeps the corner backdoor out on IID and
  non-IID data alike: it drops all 4 boosted attackers in every round (Dirichlet 0.3, 12 rounds: 0.0,
  keeping 11-12 of 20 clients a round; Dirichlet 0.3 and 0.5 at 30 rounds: 0.0; seeds 1 and 2 at 12
  rounds: 0.01, 0.03; also 0.0 with 40% attackers and without the boost), at a cost in accuracy on
  non-IID data, since it keeps only the bare majority of diverse honest clients (Dirichlet 0.3, 12
  rounds: 0.70 vs 0.90 clustering updates; 30 rounds: 0.90 vs 0.91; seeds 1 and 2 at 12 rounds: 0.72
  and 0.76 vs 0.81 and 0.88). Clustering the *updates* (``cluster_on="updates"``) holds on IID and
  against the 2x2 and 3x3 centre triggers (<= 0.04) but lets the corner backdoor in on non-IID data
  (Dirichlet 0.3: 0.66 at 12 rounds, 0.88 at 30; seeds 1 and 2 at 12 rounds: 0.58, 0.38; Dirichlet
  0.5: 0.72 at 30): the cosines of updates see directions only, and its majority cluster keeps 0-4
  of the 4 attackers a round.
* Xie et al. (ICLR 2020): the distributed backdoor beats a single-trigger backdoor against the same
  rule (the mean): mean success over the last 5 of 20 rounds 0.98 vs 0.83 (IID) and 1.0 vs 0.89
  (Dirichlet 0.3). Against median and trimmed mean neither gets through (<= 0.03).
"""

from __future__ import annotations

import pytest
import torch

from attacks.backdoors import DistributedBackdoor
from attacks.byzantine import ByzantineClients
from attacks.data_poisoning import Backdoor, ModelReplacement
from attacks.model_poisoning import ALIE, MinMax, MinSum
from secagg.aggregation import Aggregator, CoordinateMedian, Krum, Mean, TrimmedMean
from secagg.aggregation.flame import FLAME
from secagg.aggregation.fltrust import FLTrust
from secagg.data.partition import PartitionConfig
from secagg.experiment import ExperimentConfig, run_experiment
from secagg.fedavg import ClientConfig, FedAvgConfig
from secagg.fedavg.adversary import Adversary
from secagg.task import TaskConfig

CLIENTS, ATTACKERS = 20, 4
NON_IID = PartitionConfig("dirichlet", alpha=0.3)


def history(aggregator: Aggregator, adversary: Adversary, rounds: int,
            partition: PartitionConfig = NON_IID) -> list[dict]:
    torch.set_num_threads(1)
    fedavg = FedAvgConfig(rounds=rounds, fraction=1.0, client=ClientConfig(epochs=2, batch_size=16, lr=0.2),
                          aggregator=aggregator, adversary=adversary)
    task = TaskConfig(num_clients=CLIENTS, partition=partition, model="mlp")
    return run_experiment(ExperimentConfig(task=task, fedavg=fedavg, seed=0)).history


@pytest.mark.parametrize("rule", [Krum(f=ATTACKERS), TrimmedMean(f=ATTACKERS)], ids=["krum", "trimmed-mean"])
def test_min_max_and_min_sum_break_krum_and_trimmed_mean_more_than_alie(rule):
    accuracy = {name: history(rule, ByzantineClients(ATTACKERS / CLIENTS, attack), 12)[-1]["accuracy"]
                for name, attack in (("alie", ALIE()), ("min-max", MinMax()), ("min-sum", MinSum()))}
    assert accuracy["min-max"] < accuracy["alie"] - 0.03, accuracy
    assert accuracy["min-sum"] < accuracy["alie"] - 0.03, accuracy


SCALED = ModelReplacement()
CORNER = Backdoor(target=0, fraction=0.3)
CENTER = Backdoor(target=0, fraction=0.3, position="center", size=3)


@pytest.mark.parametrize("trigger", [CORNER, CENTER], ids=["corner", "center"])
def test_fltrust_keeps_a_scaled_backdoor_out_where_the_mean_takes_it(trigger):
    attack = ByzantineClients(ATTACKERS / CLIENTS, SCALED, trigger)
    success = {name: history(rule, attack, 12)[-1]["attack_success"]
               for name, rule in (("mean", Mean()), ("fltrust", FLTrust()), ("median", CoordinateMedian()))}
    assert success["mean"] > 0.9 and success["fltrust"] < 0.4, success
    # the papers' "the median fails" does not reproduce on digits, wherever the trigger sits (docstring)
    assert success["median"] < 0.2, success


@pytest.mark.parametrize("partition", [PartitionConfig("iid"), NON_IID], ids=["iid", "dirichlet-0.3"])
def test_flame_keeps_a_scaled_backdoor_out_where_the_mean_takes_it(partition):
    # clustering the clients' models (FLAME's default); clustering updates lets it in on
    # Dirichlet(0.3): 0.66 (module docstring)
    attack = ByzantineClients(ATTACKERS / CLIENTS, SCALED, CORNER)
    success = {name: history(rule, attack, 12, partition)[-1]["attack_success"]
               for name, rule in (("mean", Mean()), ("flame", FLAME(secret_noise=False)))}
    assert success["mean"] > 0.9 and success["flame"] < 0.1, success


def test_the_distributed_backdoor_beats_a_single_trigger_against_the_same_rule():
    def late_success(data_attack) -> float:
        rows = history(Mean(), ByzantineClients(ATTACKERS / CLIENTS, data_attack=data_attack), 20)
        return sum(r["attack_success"] for r in rows[-5:]) / 5

    single = late_success(Backdoor(target=0, fraction=0.3))
    distributed = late_success(DistributedBackdoor(target=0, fraction=0.3))
    assert distributed > single + 0.05, (distributed, single)
