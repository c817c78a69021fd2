// The CPU host path without Python: what cseg.runtime.native (host_path.cpp, nanobind) calls, and what the aarch64
// check (scripts/aarch64_check.sh, tests/native/harness.cpp) builds on its own. The arithmetic per pixel is
// resample.h's; this layer adds the row loops, their vectorised variants and the threads.
// Both functions check what would corrupt memory (empty or oversized sides, indices out of range) and throw
// std::invalid_argument / std::out_of_range; everything else is the Python callers' to check.
#pragma once

#include <cstdint>

namespace cseg {

// The largest side either function takes (frame, logits, output): every index product in the loops (4 * side at
// most) then fits an int, and every integer coordinate a float. Far beyond cseg.images.MAX_SIDE.
constexpr int64_t kMaxSide = int64_t{1} << 24;

// An HxWx3 uint8 frame with any strides in bytes (negative: a flipped view; 0: a grey frame read as 3 channels).
struct FrameView {
    const uint8_t* data;
    int64_t height, width;
    int64_t stride[3];
};

// frame -> out [3, size, size] float32 (contiguous): SAM 3's antialiased bilinear resize, rounded to grey levels,
// normalised per channel. Output channel c reads source channel c, or 2 - c when bgr.
void preprocess(const FrameView& frame, bool bgr, const float mean[3], const float std_[3], float* out, int64_t size);

// logits [k, in_h, in_w] float32 (contiguous); select[count]: indices into k; out [count, out_h, out_w] as 0/1 bytes
// (contiguous): each selected mask upsampled (torch's bilinear, or cv2's INTER_CUBIC when bicubic) and thresholded
// at 0.
void upsample_threshold(const float* logits, int64_t k, int64_t in_h, int64_t in_w, const int64_t* select,
                        int64_t count, uint8_t* out, int64_t out_h, int64_t out_w, bool bicubic);

int thread_count();

}  // namespace cseg
