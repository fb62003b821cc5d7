"""A run's log says what concerns the run: Lightning's notices about itself filtered out, and a
model summary without a FLOPs column that would read 0.

- `quiet_lightning_tips()`: drops Lightning's "💡 Tip: ... try installing litlogger/litmodels"
  lines (logged at INFO by every Trainer), its note that a summary callback was configured,
  and its own deprecation warning about torch's pytree API (Lightning's code, not the run's);
  everything else it logs stays.
- `ParameterSummary` (conf/callbacks/model_summary.yaml): Lightning's RichModelSummary with the
  module's own compute per image instead of Lightning's FLOPs. Lightning counts FLOPs only by
  running `example_input_array`, which a detector taking lists of images and targets has none
  of, so it printed `Total FLOPs: 0`; the train task counts them (`instseg.models.cost`) and
  sets them on the module as `cost` (anything with a `describe()`), which this prints.
"""

from __future__ import annotations

import logging
import warnings

from pytorch_lightning.callbacks import RichModelSummary
from pytorch_lightning.utilities.model_summary import get_human_readable_count

LIGHTNING_INFO_LOGGER = "pytorch_lightning.utilities.rank_zero"
NOTICES = ("💡 Tip:", "Trainer already configured with model summary callbacks")
PYTREE_DEPRECATION = r"`isinstance\(treespec, LeafSpec\)` is deprecated"


class _DropAdvertisements(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(NOTICES)


_FILTER = _DropAdvertisements()


def quiet_lightning_tips() -> None:
    """Filter Lightning's product tips out of its log (idempotent)."""
    logger = logging.getLogger(LIGHTNING_INFO_LOGGER)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    warnings.filterwarnings("ignore", message=PYTREE_DEPRECATION)


class ParameterSummary(RichModelSummary):
    """The model's top-level modules with their parameter counts and modes, and the module's
    `cost` per image where it has one (no Lightning FLOPs column)."""

    _cost = None  # the module's, read at fit start

    def on_fit_start(self, trainer, pl_module) -> None:
        self._cost = getattr(pl_module, "cost", None)
        super().on_fit_start(trainer, pl_module)

    def summarize(self, summary_data, total_parameters: int, trainable_parameters: int,
                  model_size: float, total_training_modes: dict[str, int], total_flops: int,
                  **summarize_kwargs) -> None:
        from rich import get_console
        from rich.table import Table

        columns = [(name, values) for name, values in summary_data if name != "FLOPs"]
        table = Table(header_style=summarize_kwargs.get("header_style", "bold magenta"))
        for name, _ in columns:
            table.add_column(name, justify="right" if "Params" in name else "left")
        for row in zip(*(values for _, values in columns), strict=True):
            table.add_row(*row)
        frozen = total_parameters - trainable_parameters
        totals = Table.grid()
        for label, value in [("Trainable params", get_human_readable_count(trainable_parameters)),
                             ("Non-trainable params", get_human_readable_count(frozen)),
                             ("Total params", get_human_readable_count(total_parameters)),
                             ("Parameter size (MB)", f"{model_size:,.1f}")]:
            totals.add_row(f"[bold]{label}[/]: {value}")
        if self._cost is not None:
            totals.add_row(f"[bold]Compute (multiply-adds)[/]: {self._cost.describe()}")
        console = get_console()
        console.print(table)
        console.print(totals)
