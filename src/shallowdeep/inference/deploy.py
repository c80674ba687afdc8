"""Early exits outside PyTorch: the torch-free runtime of an export, the ``shallowdeep-deploy``
distribution's (``shallowdeep_deploy.runtime``; one implementation, which the main package depends
on). ``deploy.load(EXPORT).classify(images)``: see that module."""

from shallowdeep_deploy.runtime import Classified, Deployment, ExportError, Manifest, StageFile, load

__all__ = ["Classified", "Deployment", "ExportError", "Manifest", "StageFile", "load"]
