"""Which exporters a pending lease may get, and at what priority, computed once per pass.

One scheduler pass builds a `Candidates` from the exporters and policies it read. Exporters
are indexed by label, so a selector's matches are an intersection of sets; leases that ask
the same thing (namespace, selector, exporter, allow_disabled, client labels, requested hold)
share one `Evaluation`, so a queue of a thousand leases with a few distinct requests costs
a few evaluations, not a thousand scans of every exporter.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from controllerd.board_states import OUT_OF_SERVICE
from controllerd.policy import held_for
from controllerd.records import AccessPolicy, Client, Exporter, Lease
from jumpstarter.selector import LabelIndex, parse

ExporterKey = tuple[str, str]  # (namespace, name)
Verdict = tuple[str, str, str]  # (condition type, reason, message)


@dataclass(eq=False)
class Evaluation:
    """What one pass concluded for every pending lease of one request shape."""

    priority: int = 0
    candidates: list[tuple[int, Exporter]] = field(default_factory=list)  # approved, best first
    verdict: Verdict | None = None  # set when the request can never be granted
    exhausted: bool = False  # nothing usable left in this pass (the busy set only grows within one)
    out_of_service: list[Exporter] = field(default_factory=list)  # approved, but unhealthy or in maintenance

    @property
    def keys(self) -> frozenset[ExporterKey]:
        return frozenset((e.namespace, e.name) for _, e in self.candidates)


class Candidates:
    """Evaluates pending leases against one pass's exporters and policies, once per distinct request."""

    def __init__(
        self, exporters: dict[ExporterKey, Exporter], policies: list[AccessPolicy], now: float
    ) -> None:
        self.exporters = exporters
        self.now = now  # what held_for measures a request's hold from
        self._index: dict[str, LabelIndex[ExporterKey]] = {}
        for key, exporter in exporters.items():
            self._index.setdefault(key[0], LabelIndex()).add(key, exporter.labels)
        self._policies: dict[str, list[AccessPolicy]] = {}
        for policy in policies:
            self._policies.setdefault(policy.namespace, []).append(policy)
        self._policy_exporters: dict[tuple[str, str], set[ExporterKey]] = {}
        self._evaluations: dict[tuple[object, ...], Evaluation] = {}
        self.evaluated = 0  # distinct requests evaluated (the expensive part of a pass)

    def _select(self, namespace: str, selector: str) -> set[ExporterKey]:
        index = self._index.get(namespace)
        return index.select(parse(selector)) if index is not None else set()

    def evaluate(self, lease: Lease, client: Client | None) -> Evaluation:
        labels = None if client is None else tuple(sorted(client.labels.items()))
        held = held_for(lease, self.now)
        key = (
            lease.namespace,
            lease.selector,
            lease.exporter_name,
            lease.allow_disabled,
            lease.out_of_service_ok,
            labels,
            held,
        )
        evaluation = self._evaluations.get(key)
        if evaluation is None:
            evaluation = self._evaluations[key] = self._evaluate(lease, client, held)
            self.evaluated += 1
        return evaluation

    def _evaluate(self, lease: Lease, client: Client | None, held: float) -> Evaluation:
        evaluation = Evaluation()
        selector = parse(lease.selector)
        if lease.exporter_name:
            exporter = self.exporters.get((lease.namespace, lease.exporter_name))
            if exporter is None:
                evaluation.verdict = (
                    "Unsatisfiable",
                    "ExporterNotFound",
                    f"exporter {lease.exporter_name} not found",
                )
                return evaluation
            if not selector.empty and not selector.matches(exporter.labels):
                evaluation.verdict = (
                    "Unsatisfiable",
                    "SelectorMismatch",
                    f"exporter {exporter.name} does not match selector {lease.selector}",
                )
                return evaluation
            if not exporter.enabled and not lease.allow_disabled:
                evaluation.verdict = (
                    "Unsatisfiable",
                    "ExporterDisabled",
                    f"exporter {exporter.name} is disabled (use --allow-disabled)",
                )
                return evaluation
            candidates = [exporter]
        else:
            matching = [self.exporters[k] for k in sorted(self._select(lease.namespace, lease.selector))]
            candidates = [e for e in matching if e.enabled or lease.allow_disabled]
            if matching and not candidates:
                evaluation.verdict = (
                    "Unsatisfiable",
                    "AllDisabled",
                    f"all {len(matching)} exporters matching {lease.selector} are disabled",
                )
                return evaluation
        self._approve(evaluation, lease, client, candidates, held)
        if not evaluation.candidates:
            evaluation.verdict = (
                "Unsatisfiable",
                "NoAccess" if candidates else "ExporterNotFound",
                f"{len(candidates)} exporters match, none is approved by a policy for your client"
                if candidates
                else f"no exporter matches selector {lease.selector!r}",
            )
            return evaluation
        # in the order a grant picks in
        approved = sorted(evaluation.candidates, key=lambda pe: (-pe[0], pe[1].name))
        if not lease.out_of_service_ok:  # such boards are never granted: the lease waits, and says why
            evaluation.out_of_service = [e for _, e in approved if e.health in OUT_OF_SERVICE]
            evaluation.candidates = [pe for pe in approved if pe[1].health not in OUT_OF_SERVICE]
        else:
            evaluation.candidates = approved
        # queued at the best priority of a board it can get (of those it waits for, when none is in service)
        evaluation.priority = (evaluation.candidates or approved)[0][0]
        return evaluation

    def _approve(
        self,
        evaluation: Evaluation,
        lease: Lease,
        client: Client | None,
        candidates: list[Exporter],
        requested: float,
    ) -> None:
        """Keep the candidates a policy lets this client have for `requested` seconds (held_for), each
        at its best policy's priority."""
        policies = self._policies.get(lease.namespace, [])
        if not policies or lease.out_of_service_ok:  # no policy, or the admin's own lease: everything
            evaluation.candidates = [(0, e) for e in candidates]
            return
        allowed = [
            p
            for p in policies
            if client is not None
            and parse(p.client_selector).matches(client.labels)
            and (p.maximum_duration is None or requested <= p.maximum_duration)
        ]
        for exporter in candidates:
            key = (exporter.namespace, exporter.name)
            priorities = [p.priority for p in allowed if key in self._exporters_of(p)]
            if priorities:
                evaluation.candidates.append((max(priorities), exporter))

    def _exporters_of(self, policy: AccessPolicy) -> set[ExporterKey]:
        key = (policy.namespace, policy.name)
        if key not in self._policy_exporters:
            self._policy_exporters[key] = self._select(policy.namespace, policy.exporter_selector)
        return self._policy_exporters[key]
