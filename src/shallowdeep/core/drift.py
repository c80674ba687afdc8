"""The drift monitor (``DriftMonitor``) and the validation split's exit profile it tests against
(``ExitProfile``): the deploy runtime's (``shallowdeep_deploy.drift``), used by analysis,
calibration.json, the engine, the export manifest and the torch-free runtime alike."""

from shallowdeep_deploy.drift import ALPHA, WINDOW, DriftCheck, DriftMonitor, ExitProfile, chi2_sf, exit_profile

__all__ = ["ALPHA", "WINDOW", "DriftCheck", "DriftMonitor", "ExitProfile", "chi2_sf", "exit_profile"]
