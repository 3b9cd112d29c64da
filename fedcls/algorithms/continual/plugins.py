"""Avalanche plugins at the sites, driven from fedcls's one client loop.

``PluginHook`` shows a plugin a small view of the step (``AvalancheView``: model, optimizer,
loss, mb_x/mb_y/mb_output, experience, clock, device, criterion) and calls its callbacks at the
matching points of the loop, in Avalanche's order:

    site reaches a new experience (first round on it, global weights loaded):
        after_training_exp (on the experience it finished)  then  before_training_exp
    each round: before_training_epoch (once)
    each step:  before_training_iteration, before_forward, after_forward, before_backward
                (the plugin may add to view.loss), after_backward, before_update,
                after_update, after_training_iteration
    end of round: after_training_epoch (once)

Limits: the forward pass has already run when before_forward is called (plugins that change
mb_x are not supported), epoch callbacks run once per round, and plugins that replace the
dataloader (ReplayPlugin) are not driven here: replay has its own hook (replay.py).
Tried: EWCPlugin (the anchor test against Avalanche's own EWC strategy), LwFPlugin, MASPlugin,
SynapticIntelligencePlugin (tests/test_continual.py).

A plugin's state (EWC's importances and saved parameters, LwF's previous model, ...) goes into the
client's state after each round and back into a fresh plugin before the next, so it survives
across rounds and experiences whichever Ray actor serves the site. It is kept as data, never
pickled (a crafted state file must not run code, issue 16): its attributes through
fedcls.outputs.state_codec, Avalanche's ParamData as (name, tensor), a model as its state_dict
(rebuilt as a copy of the site's model), the structure as JSON beside the tensors.
Hand-written: Avalanche plugins have no state_dict of their own.
"""

from __future__ import annotations

import ast
import copy
import json
from types import SimpleNamespace

import torch
from torch import nn

from fedcls.algorithms.training import Hook, TrainContext
from fedcls.errors import ConfigError, unknown_name


def plugin_names() -> list[str]:
    import avalanche.training.plugins as P

    return sorted(n for n in dir(P) if n.endswith("Plugin") and n not in ("SupervisedPlugin", "BasePlugin"))


def parse_plugin(spec: str) -> tuple[str, dict]:
    """'LwFPlugin(alpha=1, temperature=2)' -> ('LwFPlugin', {'alpha': 1, 'temperature': 2})."""
    try:
        node = ast.parse(spec.strip(), mode="eval").body
        if isinstance(node, ast.Name):
            return node.id, {}
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.args):
            raise ValueError
        return node.func.id, {k.arg: ast.literal_eval(k.value) for k in node.keywords}
    except (SyntaxError, ValueError):
        raise ConfigError(f"continual.plugins: cannot read '{spec}'; write a plugin as "
                          "Name or Name(key=value, ...), e.g. 'LwFPlugin(alpha=1)'") from None


def make_plugin(spec: str):
    """An Avalanche plugin from its spec, or a ConfigError naming the valid plugins."""
    import avalanche.training.plugins as P

    name, kwargs = parse_plugin(spec)
    if name not in plugin_names():
        raise unknown_name("Avalanche plugin", name, plugin_names(), key="continual.plugins")
    try:
        return getattr(P, name)(**kwargs)
    except (TypeError, AssertionError, ValueError) as err:
        raise ConfigError(f"continual.plugins: {name}({kwargs}) failed: {err}") from None


STRUCTURE, TENSOR = "structure", "~tensor"  # a dumped plugin: its state as JSON, tensors beside it


def dump(plugin) -> dict[str, torch.Tensor]:
    """A plugin's state as a client-state entry: named tensors only (the module docstring)."""
    from avalanche.training.utils import ParamData

    from fedcls.outputs.state_codec import encode

    custom = {ParamData: ("paramdata", lambda p: [p.name, p.data.detach().cpu()]),
              nn.Module: ("module", lambda m: {k: v.detach().cpu() for k, v in m.state_dict().items()})}
    tensors: dict[str, torch.Tensor] = {}
    structure = json.dumps(_tensors_out(encode(plugin, custom), tensors))
    return {STRUCTURE: torch.frombuffer(bytearray(structure.encode()), dtype=torch.uint8), **tensors}


def load(entry: dict[str, torch.Tensor], plugin, model: nn.Module):
    """`plugin`, freshly made, with the state `dump` kept; models rebuilt as copies of `model`."""
    from avalanche.training.utils import ParamData

    from fedcls.outputs.state_codec import restore

    if STRUCTURE not in entry:
        raise ValueError("this site's continual state was written by an older fedcls (a pickled plugin, which "
                         "is no longer read): delete the site's state-dir file or start the run afresh")
    device = next(model.parameters()).device

    def module(state: dict):
        rebuilt = copy.deepcopy(model)
        rebuilt.load_state_dict(state)
        return rebuilt

    decoders = {"paramdata": lambda v: ParamData(v[0], init_tensor=v[1].to(device), device=device), "module": module}
    restore(plugin, _tensors_in(json.loads(bytes(entry[STRUCTURE].numpy()).decode()), entry), decoders)
    return plugin


def _tensors_out(value, tensors: dict):
    """`value` with each tensor moved into `tensors` and replaced by a reference to it."""
    if isinstance(value, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = value.detach().cpu()
        return {TENSOR: key}
    if isinstance(value, dict):
        return {k: _tensors_out(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [_tensors_out(v, tensors) for v in value]
    return value


def _tensors_in(value, tensors: dict):
    if isinstance(value, dict):
        return tensors[value[TENSOR]] if set(value) == {TENSOR} else {k: _tensors_in(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [_tensors_in(v, tensors) for v in value]
    return value


class AvalancheView(SimpleNamespace):
    """What an Avalanche plugin reads from its strategy, filled from the loop's context."""

    def __init__(self, ctx: TrainContext, experience, exp_index: int):
        super().__init__(
            model=ctx.model, optimizer=ctx.optimizer, device=ctx.data.train_x.device,
            _criterion=nn.CrossEntropyLoss(), train_mb_size=ctx.params.batch_size,
            train_epochs=ctx.params.epochs, experience=experience, adapted_dataset=experience.dataset,
            is_training=True, is_eval=False, loss=None, mb_output=None, mbatch=None,
            clock=SimpleNamespace(train_exp_counter=exp_index, train_iterations=0,
                                  train_exp_iterations=0, train_epoch_iterations=0,
                                  train_exp_epochs=0, total_iterations=0))

    @property
    def mb_x(self):
        return self.mbatch[0]

    @property
    def mb_y(self):
        return self.mbatch[1]

    @property
    def mb_task_id(self):
        return self.mbatch[-1]


class PluginHook(Hook):
    """Drives one Avalanche plugin; `key` names its entry in the client state."""

    def __init__(self, key: str, new_plugin, stream, previous: int, current: int):
        self.key, self.new_plugin, self.stream = key, new_plugin, stream
        self.previous, self.current = previous, current  # experiences: last trained, this round
        self.plugin, self.view = None, None

    def _call(self, name: str) -> None:
        getattr(self.plugin, name)(self.view)

    def before_training(self, ctx: TrainContext) -> None:
        entry = ctx.state.get(self.key)
        self.plugin = load(entry, self.new_plugin(), ctx.model) if entry is not None else self.new_plugin()
        if 0 <= self.previous < self.current:  # the site has finished `previous`
            self.view = AvalancheView(ctx, self.stream.train_experience(self.previous), self.previous)
            self.finish_experience(ctx)
        self.view = AvalancheView(ctx, self.stream.train_experience(self.current), self.current)
        if self.current != self.previous:
            self._call("before_training_exp")
        self._call("before_training_epoch")

    def finish_experience(self, ctx: TrainContext) -> None:
        if len(self.view.experience.dataset):  # nothing to learn from an empty experience
            self._call("after_training_exp")

    def extra_loss(self, ctx: TrainContext) -> torch.Tensor | None:
        v = self.view
        v.mbatch = [ctx.inputs, ctx.targets, torch.zeros_like(ctx.targets)]
        v.mb_output, v.loss = ctx.logits, ctx.loss.clone()  # plugins add in place
        for name in ("before_training_iteration", "before_forward", "after_forward", "before_backward"):
            self._call(name)
        return v.loss - ctx.loss  # what the plugin added (EWC's penalty, LwF's distillation)

    def after_backward(self, ctx: TrainContext) -> None:
        self._call("after_backward")
        self._call("before_update")

    def after_step(self, ctx: TrainContext) -> None:
        self._call("after_update")
        self._call("after_training_iteration")
        for k in ("train_iterations", "train_exp_iterations", "train_epoch_iterations", "total_iterations"):
            setattr(self.view.clock, k, getattr(self.view.clock, k) + 1)

    def after_training(self, ctx: TrainContext) -> dict[str, float]:
        self._call("after_training_epoch")
        self.view = None  # not pickled with the plugin
        ctx.state[self.key] = dump(self.plugin)
        return {}
