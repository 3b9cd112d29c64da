"""A cohort worker (one per Ray actor, on a GPU when given one): answers a round's messages
for the sites assigned to it. Train messages are trained together in cohorts of
``backend.cohort_size`` (fedcls.apps.cohort.train); a client that cannot join a cohort (BatchNorm,
dropout, a hook without a cohort form, Avalanche plugins) trains alone through the ClientApp's
own function, as do evaluation and query messages. Each site's Context (its client state)
lives here, so a site always goes to the same worker; a Context without state is dropped after
its call.
"""

from __future__ import annotations

from flwr.app import Context, Message, RecordDict
from flwr.app.error import Error
from flwr.common.constant import ErrorCode

from fedcls.apps import client_app
from fedcls.apps.cohort import preaggregate
from fedcls.apps.cohort.train import CohortClient, cohort_blocker, cohort_update
from fedcls.apps.payload import CONFIG_KEY, read_payload
from fedcls.errors import failure_reason


class CohortWorker:
    def __init__(self, per_client: bool = False):
        self.contexts: dict[int, Context] = {}
        self.per_client = per_client  # the reference: every message through the ClientApp's functions
        self.notices: list[str] = []

    def context(self, site: int) -> Context:
        if site not in self.contexts:
            self.contexts[site] = Context(run_id=0, node_id=site + 1, node_config={"partition-id": site},
                                          state=RecordDict(), run_config={})
        return self.contexts[site]

    def process(self, items: list[tuple[int, Message]]) -> tuple[list[Message], list[str]]:
        """Replies to (site, message) pairs, in order; and notices of clients trained alone."""
        self.notices = []
        replies: dict[int, Message] = {}
        train = [(i, site, m) for i, (site, m) in enumerate(items)
                 if m.metadata.message_type == "train" and not self.per_client]
        for i, (site, msg) in enumerate(items):
            if msg.metadata.message_type != "train" or self.per_client:
                replies[i] = self._guarded(msg, lambda: self._single(site, msg))
        for cohort in self._cohorts(train):
            replies.update(self._train_cohort(cohort))
        self._forget_stateless({site for site, _ in items})
        return [replies[i] for i in range(len(items))], self.notices

    def _forget_stateless(self, sites: set[int]) -> None:
        """Drop the Contexts of `sites` that hold no state (a site that only evaluated, or answered
        a query): a worker keeps nothing per site but its persisted state, whatever the sites' number."""
        for site in sites:
            if site in self.contexts and not self.contexts[site].state:
                del self.contexts[site]

    def _cohorts(self, train: list) -> list[list]:
        if not train:
            return []
        cfg = read_payload(str(train[0][2].content["config"][CONFIG_KEY])).cfg
        by_weights: dict[int, list] = {}  # clients sent the same weights object train together
        for entry in train:
            by_weights.setdefault(id(entry[2].content["arrays"]), []).append(entry)
        cohorts = []
        for group in by_weights.values():
            size = cfg.backend.cohort_size or len(group)
            cohorts += [group[i:i + size] for i in range(0, len(group), size)]
        return cohorts

    def _single(self, site: int, msg: Message) -> Message:
        handler = {"train": client_app.train, "evaluate": client_app.evaluate_local}.get(
            msg.metadata.message_type, client_app.query)
        return handler(msg, self.context(site))

    def _train_cohort(self, cohort: list) -> dict[int, Message]:
        replies, jobs = {}, []
        for i, site, msg in cohort:
            try:
                jobs.append((i, client_app.prepare_train(msg, self.context(site))))
            except Exception as err:  # noqa: BLE001 - the site's failure, as Flower reports it
                replies[i] = error_reply(msg, err)
        ready, alone = [], []
        for i, job in jobs:
            reason = cohort_blocker(job.model, job.hooks, job.params)
            (alone if reason else ready).append((i, job))
            if reason:
                self.notices.append(f"site {job.site} trains alone: {reason}")
        for i, job in alone:
            replies[i] = self._guarded(job.msg, lambda: self._alone(job))
        if ready:
            replies.update(self._together(ready))
        return replies

    def _alone(self, job) -> Message:
        # the clients trained before it on this actor moved the shared model: the global weights again
        job.model.load_state_dict(job.msg.content["arrays"].to_torch_state_dict(), strict=False)
        return client_app.run_job(job)

    def _together(self, ready: list) -> dict[int, Message]:
        first = ready[0][1]
        cfg = first.cfg
        clients = [CohortClient(job.data, job.params, job.hooks, job.state) for _, job in ready]
        try:
            first.model.load_state_dict(first.msg.content["arrays"].to_torch_state_dict(), strict=False)
            results = cohort_update(first.model, clients, cfg.backend.precision, cfg.backend.channels_last)
        except Exception as err:  # noqa: BLE001 - the cohort's clients fail this round together
            return {i: error_reply(job.msg, err) for i, job in ready}
        replies = [client_app.train_reply(job, result, weights) for (_, job), (weights, result) in zip(ready, results)]
        if cfg.backend.pre_aggregate:
            if preaggregate.eligible(cfg.strategy.name):
                replies = preaggregate.pre_aggregate(replies, [job.msg for _, job in ready])
            else:
                self.notices.append(f"backend.pre_aggregate is ignored: {cfg.strategy.name} does not "
                                    f"aggregate a weighted mean of the weights")
        return {i: reply for (i, _), reply in zip(ready, replies)}

    @staticmethod
    def _guarded(msg: Message, work) -> Message:
        try:
            return work()
        except Exception as err:  # noqa: BLE001
            return error_reply(msg, err)


def error_reply(msg: Message, err: Exception) -> Message:
    """The failed client's reply, as Flower's ClientApp errors are: its reason is the one-line
    cause, then the worker's traceback (the server keeps it in the run folder's client_errors.txt)."""
    return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=failure_reason(err)), reply_to=msg)

