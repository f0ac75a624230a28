"""The stages of the recipe: one registry of inputs and outputs (`registry`, `definitions`), one runner.

    from batray.stages import resolve, run_stage, run_recipe
"""

from batray.stages.kit import ActorKit
from batray.stages.registry import REGISTRY, Resolved, StagePlan, StageResult, check_inputs, resolve, stage_named
from batray.stages.runner import format_plan, plan_recipe, run_recipe, run_stage, select_stages

__all__ = ["REGISTRY", "ActorKit", "Resolved", "StagePlan", "StageResult", "check_inputs", "format_plan",
           "plan_recipe", "resolve", "run_recipe", "run_stage", "select_stages", "stage_named"]
