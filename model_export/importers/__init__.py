"""Importers: segmentation networks of well-known families, with their weights, as servable
ONNX files with a complete card (``python -m model_export import``, docs/MODEL.md).

One module per family (``torchvision_models``, ``segformer``, ``smp_models``) builds the network
and loads its weights into a ``publish.Built``; ``publish`` exports it with a parity check into
the model repository. The names below are here so that the command line can offer them without
importing the families' libraries.
"""

TORCHVISION_MODELS = (
    "fcn_resnet50",
    "fcn_resnet101",
    "deeplabv3_resnet50",
    "deeplabv3_resnet101",
    "deeplabv3_mobilenet_v3_large",
    "lraspp_mobilenet_v3_large",
)
SMP_ARCHITECTURES = ("Unet", "FPN", "DeepLabV3Plus")
# The card's input size and native long-side limit. torchvision's weights were trained and are
# evaluated at 520 px, SegFormer's ADE20K ones on 512 px crops; 512 for all, because the native
# policy pads to 64 px steps and would run 520 as 576 (23 % more pixels; docs/MODEL.md).
DEFAULT_SIZES = {"torchvision": 512, "segformer": 512, "smp": 512}
