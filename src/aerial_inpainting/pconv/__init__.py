"""Plain-PyTorch partial-convolution inpainting (Liu et al. 2018): layer, U-Net, VGG, loss."""

from aerial_inpainting.pconv.loss import InpaintingLoss, LossWeights
from aerial_inpainting.pconv.partial_conv import PartialConv2d
from aerial_inpainting.pconv.unet import PConvUNet, UNetConfig
from aerial_inpainting.pconv.vgg import VGG16FeatureExtractor, build_vgg16_features

__all__ = [
    "InpaintingLoss",
    "LossWeights",
    "PConvUNet",
    "PartialConv2d",
    "UNetConfig",
    "VGG16FeatureExtractor",
    "build_vgg16_features",
]
