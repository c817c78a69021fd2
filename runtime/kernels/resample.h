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

// --- Mask postprocessing, bilinear: torch's upsample_bilinear2d with align_corners=False (two taps per axis),
// written in the order of cseg's numpy oracle (horizontal taps first, then vertical), then thresholded at 0.

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

// --- Mask postprocessing, bicubic: cv2.resize(..., interpolation=INTER_CUBIC) on float32, with which the research
// ReasonSeg script (evaluate_reasonseg.py postprocess_masks) upsamples its logits before thresholding at 0. Keys'
// cubic with a = -0.75, half-pixel centres; the source coordinate is not clamped, the four taps' indices are (border
// replicate); the kernel is not widened when shrinking. torch's F.interpolate(mode="bicubic", align_corners=False)
// is the same function. The weights are those of the exact source coordinate, computed in double and rounded to
// float (as IPP, which cv2.resize runs by default on x86, gives them: within 1e-6 of it); OpenCV's own code and
// torch round the coordinate to float first (up to ~1e-4 apart on logits of unit scale). Rows are filtered first,
// then combined vertically, as OpenCV does.

struct CubicTap {
    int index[4];     // source indices, clamped into [0, in_size)
    float weight[4];  // weights of those taps
};

CSEG_HD CubicTap cubic_tap(int in_size, int out_size, int i) {
    // the source coordinate (i + 0.5) * in / out - 0.5 = numerator / denominator, split exactly into floor + fraction
    const long long numerator = (2LL * i + 1) * in_size - out_size, denominator = 2LL * out_size;
    long long floor_source = numerator / denominator;
    if (numerator % denominator < 0) --floor_source;  // C++ division truncates towards 0
    const double t = (double)(numerator - floor_source * denominator) / (double)denominator;
    const double a = -0.75;
    const double w0 = ((a * (t + 1.0) - 5.0 * a) * (t + 1.0) + 8.0 * a) * (t + 1.0) - 4.0 * a;
    const double w1 = ((a + 2.0) * t - (a + 3.0)) * t * t + 1.0;
    const double w2 = ((a + 2.0) * (1.0 - t) - (a + 3.0)) * (1.0 - t) * (1.0 - t) + 1.0;
    CubicTap tap;
    tap.weight[0] = (float)w0;
    tap.weight[1] = (float)w1;
    tap.weight[2] = (float)w2;
    tap.weight[3] = (float)(1.0 - w0 - w1 - w2);
    for (int k = 0; k < 4; ++k) {
        const long long index = floor_source - 1 + k;
        tap.index[k] = index < 0 ? 0 : (index > in_size - 1 ? in_size - 1 : (int)index);
    }
    return tap;
}

// Four taps in order: the same sum for a row's samples and for the column of filtered rows, on either side.
CSEG_HD float cubic_mix(float a, float b, float c, float d, float w_a, float w_b, float w_c, float w_d) {
    return ((a * w_a + b * w_b) + c * w_c) + d * w_d;
}

}  // namespace cseg
