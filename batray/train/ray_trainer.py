"""Ray Train's `TorchTrainer` for a local cluster batray started without the dashboard.

Ray Train V2 starts a `PlacementGroupCleaner` actor beside every controller: it asks Ray's State API
(`ray.util.state`, served by the dashboard) once a second whether the controller is still alive, and
removes the worker group's placement group if it died. On a local cluster started without the dashboard
(batray's default, `ray.dashboard: false`) that API does not answer: the cleaner can never see the
controller die, and it logged "Failed to query Ray Train Controller actor state" to the console once a
second of every training launch (174 lines in one `make run`). It is also one more process importing
`ray.train` on the critical path of each launch. So there it is left out; the local cluster and its
placement groups end with the command anyway. On any other cluster Ray Train's defaults stand.

Imported only by a Ray Train launch (it imports `ray.train.torch`).
"""

from __future__ import annotations

from ray.train.torch import TorchTrainer


class TorchTrainerWithoutStateApi(TorchTrainer):
    """`TorchTrainer` without the placement-group cleaner (its State API queries cannot answer)."""

    def _create_default_callbacks(self):
        # By class name: the callback's module is Ray Train's private layout, which moves between releases
        return [c for c in super()._create_default_callbacks()
                if type(c).__name__ != "PlacementGroupCleanerCallback"]
