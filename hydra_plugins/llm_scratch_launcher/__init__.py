"""Hydra launcher that runs each sweep job as a fresh ``python <script> ...`` process.

Lives in the ``hydra_plugins`` namespace because Hydra only instantiates launchers from there.
"""

from hydra_plugins.llm_scratch_launcher.subprocess_launcher import SubprocessLauncher

__all__ = ["SubprocessLauncher"]
