"""Image files as RGB arrays and the one resize rule: the deploy runtime's (``shallowdeep_deploy.images``),
so that training, ``predict`` and a deployment see the same pixels. ``python -m shallowdeep.core.images
FOLDER SHARE SIZE`` is one decoding worker (PIL and numpy only: it starts without torch)."""

from shallowdeep_deploy.images import (
    IMAGE_SUFFIXES,
    decode_share,
    fit_image,
    fitted_array,
    image_paths,
    open_rgb,
    read_fitted,
)

__all__ = ["IMAGE_SUFFIXES", "decode_share", "fit_image", "fitted_array", "image_paths", "open_rgb", "read_fitted"]

if __name__ == "__main__":
    import sys

    decode_share(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
