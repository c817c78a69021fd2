"""cseg.export.models: the PyTorch model definitions and the making of checkpoints (torch, transformers).

    modeling.py              ConceptSeg-R1 as a transformers model (Qwen2.5-VL + the concept head)
    concept_head_module.py   the concept head module (its export spec is export/graphs/concept_head.py)
    checkpoint_sizes.py      model dimensions of the generated checkpoints (tiny, small, full ...)
    make_checkpoint.py       `cseg make-checkpoint`: seeded random-init checkpoints in the published layouts
    sam3_layouts.py          SAM 3 weights in Meta's and in transformers' layout, both ways
    stand_in_tokenizers.py   small tokenizers with the real special tokens, for generated checkpoints

Loading a checkpoint (cseg.export.loading) stays with the exporter: it is what the exporter and the reference call,
and `from cseg.export import load_conceptseg, load_sam3` is its public form.
"""
