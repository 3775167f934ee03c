"""Robots the evaluation loop can drive; each implementation imports its heavy dependencies lazily."""

from evaluate.robots.base import Observation, Robot, StepInfo

ROBOTS = ("replay", "aloha_sim", "agilex")

__all__ = ["ROBOTS", "Observation", "Robot", "StepInfo"]
