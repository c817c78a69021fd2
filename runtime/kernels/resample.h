// The per-pixel arithmetic of cseg's host path, defined once and compiled twice: by g++ into the CPU module
// (host_path.cpp) and by nvcc into the CUDA fatbin (host_path.cu). Both builds disable FMA contraction, so the
// same expression gives the same bits on either side.
#pragma once

#include <math.h>
#include <stdint.h>

#ifdef __CUDACC__
#define CSEG_HD __host__ __device__ __forceinline__
#else
#define CSEG_HD inline
#endif

namespace cseg {

// --- SAM 3 preprocessing: Meta's processor resizes a uint8 image with torchvision v2 Resize (bilinear, antialias),
// i.e. torch's _upsample_bilinear2d_aa: a triangle filter widened by the downscale factor, align_corners=False.
// The sum is rounded to a grey level as torchvision does for uint8, then scaled to [0, 1] and normalised.

struct AaSpan {
    int start;       // first source index
    int count;       // number of source taps
    float center;    // filter centre in source coordinates
    float invscale;  // 1/scale when shrinking (the filter is widened), else 1
};

CSEG_HD AaSpan aa_span(int in_size, int out_size, int i) {
    const float scale = (float)in_size / (float)out_size;
    const float support = scale >= 1.0f ? scale : 1.0f;  // bilinear: half-width 1, widened when shrinking
    AaSpan span;
    span.center = scale * ((float)i + 0.5f);
    span.invscale = scale >= 1.0f ? 1.0f / scale : 1.0f;
    const int start = (int)(span.center - support + 0.5f);
    span.start = start > 0 ? start : 0;
    const int stop = (int)(span.center + support + 0.5f);
    span.count = (stop < in_size ? stop : in_size) - span.start;
    return span;
}

CSEG_HD float aa_filter(const AaSpan& span, int tap) {
    const float x = fabsf(((float)(tap + span.start) - span.center + 0.5f) * span.invscale);
    return x < 1.0f ? 1.0f - x : 0.0f;
}

CSEG_HD float aa_total(const AaSpan& span) {
    float total = 0.0f;
    for (int tap = 0; tap < span.count; ++tap) total += aa_filter(span, tap);
    return total;
}

// The weight of one tap: the filter normalised to sum 1 over the span (the total is computed once per span).
CSEG_HD float aa_weight(const AaSpan& span, int tap, float total) {
    return total != 0.0f ? aa_filter(span, tap) / total : 0.0f;
}

// A resized sample (a weighted sum of horizontally filtered rows) -> the normalised model input. The sum is rounded
// half to even (torch.round_) by adding 2^23, where a float has no fraction bits left: exact for 0 <= sum < 2^23,
// and unlike rintf it vectorises.
CSEG_HD float normalise_grey(float sum, float mean, float std) {
    const float shift = 8388608.0f;
    float grey = (sum + shift) - shift;
    grey = grey < 0.0f ? 0.0f : (grey > 255.0f ? 255.0f : grey);
    return (grey / 255.0f - mean) / std;
}

// --- Mask postprocessing: torch's upsample_bilinear2d with align_corners=False (two taps per axis), written in the
// order of cseg's numpy oracle (horizontal taps first, then vertical), then thresholded at 0.

struct LinearTap {
    int first;
    int second;
    float w_first;
    float w_second;
};

CSEG_HD LinearTap linear_tap(int in_size, int out_size, int i) {
    // float32 of the exact quotient, as numpy's np.float32(in_size / out_size)
    const float scale = (float)((double)in_size / (double)out_size);
    float source = ((float)i + 0.5f) * scale - 0.5f;
    source = source > 0.0f ? source : 0.0f;
    LinearTap tap;
    tap.first = (int)source < in_size - 1 ? (int)source : in_size - 1;
    tap.second = tap.first + 1 < in_size - 1 ? tap.first + 1 : in_size - 1;
    tap.w_second = source - (float)tap.first;
    tap.w_first = 1.0f - tap.w_second;
    return tap;
}

CSEG_HD float lerp_taps(float a, float b, float w_a, float w_b) { return a * w_a + b * w_b; }

}  // namespace cseg
