"""q-FedAvg (Li et al., "Fair Resource Allocation in Federated Learning", ICLR 2020): q-FFL,
which weights clients by their loss to the power q, so high-loss sites count more (q=0 is
FedAvg-like).

Server half: Flower's QFedAvg, with the run's lr as the client learning rate (L = 1/lr).
Client half: ``InitialLoss`` reports F_k(w^t), the loss of the received global model on the
site's training data, which q-FFL's update needs (the mean loss during training is not it).
"""

from flwr.app import ConfigRecord
from flwr.serverapp.strategy import QFedAvg, Strategy

from fedcls.algorithms.training import Hook, TrainContext, evaluate
from fedcls.schema import Config
from strategies import Capabilities, Param

PARAMS = {"q": Param(0.1, "fairness exponent q (0 weighs all clients by plain FedAvg steps)", minimum=0.0)}
# Flower's QFedAvg scales every array in float and fails on integer buffers (BatchNorm's
# num_batches_tracked): found by the Ray strategy test with simple_cnn_bn
CAPABILITIES = Capabilities(integer_buffers=False)
LOSS_KEY = "initial_loss"


def build_server(params: dict, common: dict, cfg: Config) -> Strategy:
    return QFedAvg(client_learning_rate=cfg.lr, q=params["q"], train_loss_key=LOSS_KEY, **common)


class InitialLoss(Hook):
    """Mean cross-entropy of the received model on the site's training split."""

    def __init__(self):
        self.loss = 0.0

    def before_training(self, ctx: TrainContext) -> None:
        self.loss, _ = evaluate(ctx.model, ctx.data.train_x, ctx.data.train_y)
        ctx.model.train()

    def after_training(self, ctx: TrainContext) -> dict[str, float]:
        return {LOSS_KEY: self.loss}


def client_hooks(config: ConfigRecord, inbox: dict) -> list[Hook]:
    return [InitialLoss()]
