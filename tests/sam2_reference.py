"""Meta's sam2 1.1.0 with random weights, beside our SAM 2.1 with the same weights, for the
parity tests and ``benchmarks/propagation.py``."""

from __future__ import annotations

import torch

from napari_sam.models.registry import build_sam2_1


def reference_model(size: int):
    """sam2's video predictor (a SAM2Base, so also an image model) with random weights, set up
    as Meta's builder sets it for inference, hole filling off (its CPU build has no kernel for
    it; ours is tested on its own)."""
    from sam2.build_sam import build_sam2_video_predictor

    overrides = [f"++model.image_size={size}",
                 "++model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability=true",
                 "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta=0.05",
                 "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh=0.98",
                 "++model.binarize_mask_from_pts_for_mem_enc=true", "++model.fill_hole_area=0"]
    torch.manual_seed(0)
    ref = build_sam2_video_predictor("configs/sam2.1/sam2.1_hiera_t.yaml", None, device="cpu",
                                     apply_postprocessing=False, hydra_overrides_extra=overrides)
    with torch.no_grad():  # parameters that start at zero or near it, made to matter
        for name, p in ref.named_parameters():
            if "pos_embed" in name or "gamma" in name or name in (
                    "no_mem_embed", "no_mem_pos_enc", "no_obj_ptr", "no_obj_embed_spatial",
                    "maskmem_tpos_enc"):
                p.normal_(0, 0.1)
        # Objects present, so that masks and memories are not the "absent" constant.
        ref.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(2.0)
    ref.eval()
    # sam2 keeps memories in bfloat16. With object pointers in the memory torch.cat promotes
    # them to float32; without (an object followed on planes before its prompted one) sam2's
    # CPU path fails on the mixed types: cast them as the promotion would.
    attend = ref.memory_attention.forward
    ref.memory_attention.forward = (
        lambda curr, memory, curr_pos=None, memory_pos=None, num_obj_ptr_tokens=0:
        attend(curr, memory.float(), curr_pos, memory_pos, num_obj_ptr_tokens))
    ours = build_sam2_1("tiny", img_size=size)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours.eval()
