"""Model dimensions of the locally generated checkpoints, as data.

`full` has the published dimensions (Qwen2.5-VL-7B + the 631M concept head, SAM 3 840M). `small` (~300M) is for CPU
benchmarks, `tiny` for tests (seconds), `tiny-alt` is a second tiny shape (other layer counts, head sizes and Q) so
nothing gets hard-coded to one configuration. Token ids of the special tokens come from the stand-in tokenizer at
write time.
"""

QWEN_FULL = {
    "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
    "num_key_value_heads": 4, "mrope_section": [16, 24, 24], "vocab_size": 152064, "num_of_query": 16,
    "vision": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
               "fullatt_block_indexes": [7, 15, 23, 31]},
}  # fmt: skip
SAM3_FULL = {
    "vit": {"hidden_size": 1024, "intermediate_size": 4736, "num_hidden_layers": 32, "num_attention_heads": 16,
            "image_size": 1008, "window_size": 24, "global_attn_indexes": [7, 15, 23, 31]},
    "text": {"vocab_size": 49408, "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
             "num_attention_heads": 16},
    "detr_layers": 6, "geometry_layers": 3,
}  # fmt: skip

SIZES = {
    "tiny": {
        "qwen": {
            "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "mrope_section": [2, 3, 3], "vocab_size": None, "num_of_query": 8,
            "vision": {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                       "fullatt_block_indexes": [1]},
        },
        "sam3": {
            "vit": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                    "image_size": 336, "window_size": 12, "global_attn_indexes": [1]},
            "text": {"vocab_size": None, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 2},
            "detr_layers": 1, "geometry_layers": 1,
        },
    },
    "tiny-alt": {
        "qwen": {
            "hidden_size": 96, "intermediate_size": 160, "num_hidden_layers": 3, "num_attention_heads": 3,
            "num_key_value_heads": 1, "mrope_section": [4, 6, 6], "vocab_size": None, "num_of_query": 5,
            "vision": {"depth": 3, "hidden_size": 48, "intermediate_size": 80, "num_heads": 3,
                       "fullatt_block_indexes": [0, 2]},
        },
        "sam3": {
            "vit": {"hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 3, "num_attention_heads": 3,
                    "image_size": 280, "window_size": 10, "global_attn_indexes": [2]},
            "text": {"vocab_size": None, "hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2,
                     "num_attention_heads": 3},
            "detr_layers": 2, "geometry_layers": 1,
        },
    },
    "small": {
        "qwen": {
            "hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 8, "num_attention_heads": 16,
            "num_key_value_heads": 4, "mrope_section": [8, 12, 12], "vocab_size": None, "num_of_query": 16,
            "vision": {"depth": 8, "hidden_size": 640, "intermediate_size": 1712, "num_heads": 10,
                       "fullatt_block_indexes": [3, 7]},
        },
        "sam3": {
            "vit": {"hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12, "num_attention_heads": 8,
                    "image_size": 1008, "window_size": 24, "global_attn_indexes": [2, 5, 8, 11]},
            "text": {"vocab_size": None, "hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 6,
                     "num_attention_heads": 8},
            "detr_layers": 6, "geometry_layers": 3,
        },
    },
    "full": {"qwen": QWEN_FULL, "sam3": SAM3_FULL},
}  # fmt: skip
