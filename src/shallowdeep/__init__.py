"""shallowdeep: Shallow-Deep Networks (Kaya, Hong, Dumitras, ICML 2019) as a library and a tool."""
from .costs import Costs, output_costs
from .data import Dataset, ImageSet, list_datasets, load_dataset
from .errors import UserError
from .models import CNN, build_cnn, list_archs
from .runs import load
from .sdn import SDN, build_sdn, to_sdn

__version__ = "0.1.0"

__all__ = [
    "CNN", "SDN", "Costs", "Dataset", "ImageSet", "UserError", "build_cnn", "build_sdn", "list_archs",
    "list_datasets", "load", "load_dataset", "output_costs", "to_sdn",
]
