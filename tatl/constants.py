"""Facts every layer shares, each stated once: the attribute names, the head names, the ImageNet normalisation."""

from __future__ import annotations

# The five dermoscopic attributes of ISIC 2018 Task 2, in the challenge's (alphabetical) order.
ATTRIBUTES_2018 = ("globules", "milia_like_cyst", "negative_network", "pigment_network", "streaks")
# ISIC 2017 Part 2 labels four of them (no globules), under the same names.
ATTRIBUTES_2017 = ("milia_like_cyst", "negative_network", "pigment_network", "streaks")

# Head names besides the attributes: Stage 1's lesion and Stage 2's union of all attribute masks (Eq. 4).
LESION = "lesion"
UNION = "union"
# The one head of a joint Stage 3 (pipeline.encoder_mode joint): one output channel per attribute.
JOINT = "joint"

# The ImageNet statistics every encoder here was trained with: images are (pixel / 255 - mean) / std.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
