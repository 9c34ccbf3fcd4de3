"""The network a config's `model` section describes: its norms and its forward.

Encoder → projector → predictor, plus the online linear classifier on
`stop_gradient(embedding)`, which monitors the representation without shaping
it. BN layers average their statistics over every device (`parallel.AXIS`).
"""

from __future__ import annotations

import dataclasses

import haiku as hk
import jax
import ml_collections

from byol import networks
from byol.normalization import NormConfig
from byol.parallel import AXIS


def network_norms(model: ml_collections.ConfigDict) -> networks.NetworkNorms:
    """Per-component norms: the `model.norm` preset with the config's overrides."""
    preset = networks.norm_preset(model.norm)

    def component(norm: NormConfig, kind: str, ws: bool) -> NormConfig:
        kind = kind or norm.kind
        return dataclasses.replace(
            norm,
            kind=kind,
            num_groups=model.num_groups,
            ws=ws,
            ws_eps=model.ws_eps,
            cross_replica_axis=AXIS if kind == "bn" else None,
        )

    encoder_ws = preset.encoder.ws if model.encoder_ws < 0 else bool(model.encoder_ws)
    return networks.NetworkNorms(
        encoder=component(preset.encoder, model.encoder_norm, encoder_ws),
        projector=component(preset.projector, model.projector_norm, bool(model.mlp_ws)),
        predictor=component(preset.predictor, model.predictor_norm, bool(model.mlp_ws)),
    )


def make_forward(
    model: ml_collections.ConfigDict,
    norms: networks.NetworkNorms,
    num_classes: int,
    with_predictor: bool = True,
) -> hk.TransformedWithState:
    """``forward(images, is_training)`` → embedding, projection, logits, prediction.

    Without the predictor (SimCLR) there is no ``prediction`` output. The
    config is read here, not in the traced function.
    """
    encoder_name, width = model.encoder, model.width_multiplier
    small_image = model.small_image
    projector_sizes = (model.projector_hidden_size, model.projection_size)
    predictor_sizes = (model.predictor_hidden_size, model.projection_size)

    def forward(images: jax.Array, is_training: bool) -> dict[str, jax.Array]:
        encoder = networks.make_encoder(
            encoder_name,
            width_multiplier=width,
            norm=norms.encoder,
            small_image=small_image,
        )
        projector = networks.MLP(
            *projector_sizes, norm=norms.projector, name="projector"
        )
        predictor = networks.MLP(
            *predictor_sizes, norm=norms.predictor, name="predictor"
        )
        # An unlabelled dataset (every label -1) trains none of its one output.
        classifier = hk.Linear(max(num_classes, 1), name="classifier")
        embedding = encoder(images, is_training)
        projection = projector(embedding, is_training)
        outputs = dict(
            embedding=embedding,
            projection=projection,
            logits=classifier(jax.lax.stop_gradient(embedding)),
        )
        if with_predictor:
            outputs["prediction"] = predictor(projection, is_training)
        return outputs

    return hk.transform_with_state(forward)
