"""Action codecs: the vocabulary that models and environments share.

- `robot`: continuous robot actions <-> the last 256 ids of the base vocabulary (Magma/OpenVLA
  q01/q99 normalisation and binning), with the statistics file saved next to the checkpoint;
- `ui`: UI actions <-> text in the VisualWebArena, Set-of-Mark and AITW grammars;
- `latent`: LAPA latent action codes <-> token ids.

Pure Python and numpy (no torch), so `envs` can import it. Bad model output raises
`ActionParseError`, missing or invalid statistics `ActionStatisticsError`.
"""

from magma.actions.errors import ActionParseError, ActionStatisticsError
from magma.actions.latent import LatentActionCodec
from magma.actions.robot import (
    ACTION_STATISTICS_FILENAME,
    ActionStatistics,
    RobotActionCodec,
    load_action_statistics,
    load_state_statistics,
    save_action_statistics,
    select_statistics,
)
from magma.actions.ui import (
    GRAMMARS,
    TASK_STATUSES,
    UI_ACTION_KINDS,
    UIAction,
    aitw_to_vwa,
    extract_vwa_action,
    format_aitw_action,
    format_som_answer,
    format_ui_action,
    format_vwa_action,
    parse_aitw_action,
    parse_som_answer,
    parse_ui_action,
    parse_vwa_action,
    som_to_vwa,
)

__all__ = [
    "ACTION_STATISTICS_FILENAME",
    "GRAMMARS",
    "TASK_STATUSES",
    "UI_ACTION_KINDS",
    "ActionParseError",
    "ActionStatistics",
    "ActionStatisticsError",
    "LatentActionCodec",
    "RobotActionCodec",
    "UIAction",
    "aitw_to_vwa",
    "extract_vwa_action",
    "format_aitw_action",
    "format_som_answer",
    "format_ui_action",
    "format_vwa_action",
    "load_action_statistics",
    "load_state_statistics",
    "parse_aitw_action",
    "parse_som_answer",
    "parse_ui_action",
    "parse_vwa_action",
    "save_action_statistics",
    "select_statistics",
    "som_to_vwa",
]
