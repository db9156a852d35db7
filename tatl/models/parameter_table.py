"""Table 5 of the paper: parameter counts of every network shape x backbone, beside the paper's figures, and of
EfficientNet-Lite0 (the offline ImageNet start), which the paper does not have.

Our networks are built with one output class and no weights. "Keras-style" counts every parameter plus the
BatchNorm running mean and variance, as Keras' model.summary() does (the paper's counts are Keras'); "trainable"
counts the nn.Parameters alone. The paper's Table 5 gives whole-network figures only for its own two networks
(EfficientNet-b0 U-shape 10,115,501 and Link-shape 6,096,333, which the paper-faithful networks reproduce); its
other figures are the ImageNet classifiers with their top, shown for reference only.
"""

from __future__ import annotations

from tatl.models.networks import PAPER_BACKBONES, build_model, check_encoder_name, count_parameters

# The backbones `tatl params` counts by default: the paper's, and beside its EfficientNet-b0 the Lite0 that gives
# the offline ImageNet start (model.encoder_weights: lite0), which is not in the paper.
LITE0_LABEL = "EfficientNet-Lite0 (paper-faithful)"
TABLE_BACKBONES: dict[str, str] = {
    **dict(list(PAPER_BACKBONES.items())[:1]), LITE0_LABEL: "paper-efficientnet-lite0",
    **dict(list(PAPER_BACKBONES.items())[1:]),
}

# (shape, encoder_name) -> the paper's whole-network figure (Table 5, "Our (EfficientNet, U/Link-shape)").
PAPER_NETWORKS = {("unet", "paper-efficientnet-b0"): 10_115_501, ("linknet", "paper-efficientnet-b0"): 6_096_333}


# encoder_name -> (the paper's label, its figure): Keras ImageNet classifiers with their top, not networks of ours.
PAPER_CLASSIFIERS = {
    "vgg16": ("VGG16", 138_357_544),
    "resnet152": ("ResNet-151", 60_419_944),
    "inceptionresnetv2": ("ResNet-v2", 55_873_736),
    "densenet169": ("DenseNet-169", 14_307_880),
    "efficientnet-b0": ("EfficientNetb0", 5_330_571),
    "paper-efficientnet-b0": ("EfficientNetb0", 5_330_571),
}


NOTES = [
    "Keras-style = all parameters + BatchNorm running mean and variance (Keras counts them as non-trainable "
    "parameters); num_batches_tracked is not counted. Trainable = nn.Parameters only. One output class.",
    "The paper-faithful networks rebuild qubvel's Keras segmentation_models Unet/Linknet on efficientnetb0 "
    "(skips: expansion activations of blocks 2a/3a/4a/6a; U filters 256-128-64-32-16) and match Table 5 exactly.",
    "Table 5's backbone figures are Keras ImageNet classifiers with their 1000-class top: not comparable with a "
    "segmentation network. Its EfficientNetb0 figure (tf.keras.applications) also counts the 7 weights of the "
    "input Normalization layer (mean 3, variance 3, count 1): 5,330,571 = 4,049,564 (body = our encoder) "
    "+ 1,281,000 (top) + 7. qubvel's EfficientNet, used by segmentation_models, has no such layer.",
    "EfficientNet-Lite0 (`paper-efficientnet-lite0`; its ImageNet weights install offline: model.encoder_weights "
    "lite0) is not in the paper: b0's stages, channels and kernels without squeeze-and-excitation (636,540 "
    "parameters fewer, all in the encoder: 3,413,024 vs 4,049,564), ReLU6 instead of swish, and a stem (32 "
    "channels) and head (1280) that stay fixed as the Lite family scales up (at Lite0's size, b0's); TF 'same' "
    "padding, as its weights were trained. With the same decoders: U 9,478,961 and Link 5,459,793 Keras-style.",
    "Paper names: 'ResNet-151' is ResNet-152 and 'ResNet-v2' is Inception-ResNet-v2 (the figures are Keras' "
    "ResNet152 and InceptionResNetV2).",
]


def select_backbones(requested: list[str] | None) -> dict[str, str]:
    """label -> encoder_name for the requested labels or encoder names (default: all of TABLE_BACKBONES)."""
    if not requested:
        return dict(TABLE_BACKBONES)
    by_key = {key.lower(): (label, name) for label, name in TABLE_BACKBONES.items() for key in (label, name)}
    selected = {}
    for item in requested:
        if item.lower() in by_key:
            label, name = by_key[item.lower()]
        else:
            check_encoder_name(item)
            label, name = item, item
        selected[label] = name
    return selected


def count_row(label: str, encoder_name: str, shape: str) -> dict:
    model = build_model(shape, encoder_name, encoder_weights=None, classes=1)
    paper_network = PAPER_NETWORKS.get((shape, encoder_name))
    classifier = PAPER_CLASSIFIERS.get(encoder_name)
    ours = count_parameters(model, keras_style=True)
    return {
        "backbone": label,
        "shape": shape,
        "encoder_name": encoder_name,
        "keras_style": ours,
        "trainable": count_parameters(model, keras_style=False),
        "encoder_keras_style": count_parameters(model.encoder, keras_style=True),
        "paper_network": paper_network,
        "matches_paper": None if paper_network is None else ours == paper_network,
        "paper_classifier": None if classifier is None else {"label": classifier[0], "parameters": classifier[1]},
    }


def format_markdown(rows: list[dict]) -> str:
    header = (
        "| backbone | shape | encoder_name | ours, Keras-style | ours, trainable | encoder, Keras-style "
        "| paper Table 5: network | paper Table 5: classifier with top |"
    )
    lines = [header, "|---|---|---|---:|---:|---:|---:|---|"]
    for row in rows:
        network = "" if row["paper_network"] is None else f"{row['paper_network']:,}"
        if row["matches_paper"] is not None:
            network += " (exact)" if row["matches_paper"] else " (differs)"
        elif row["encoder_name"] == TABLE_BACKBONES[LITE0_LABEL]:
            network = "not in the paper (see the notes)"
        classifier = row["paper_classifier"]
        classifier_text = "" if classifier is None else f"{classifier['label']} {classifier['parameters']:,}"
        lines.append(
            f"| {row['backbone']} | {row['shape']} | `{row['encoder_name']}` | {row['keras_style']:,} "
            f"| {row['trainable']:,} | {row['encoder_keras_style']:,} | {network} | {classifier_text} |"
        )
    return "\n".join([*lines, "", *[f"- {note}" for note in NOTES]])
