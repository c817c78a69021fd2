"""One module per exported sub-graph; GRAPHS maps the manifest key to the function that builds its GraphSpec."""

from cseg.export.graphs import concept_head, sam3_decoder, sam3_text, sam3_vision, vlm_decoder, vlm_vision

GRAPHS = {
    "vlm_vision": vlm_vision.spec,
    "vlm_decoder": vlm_decoder.spec,
    "concept_head": concept_head.spec,
    "sam3_vision": sam3_vision.spec,
    "sam3_text": sam3_text.spec,
    "sam3_decoder": sam3_decoder.spec,
}
