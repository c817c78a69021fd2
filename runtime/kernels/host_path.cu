// The per-frame host path as CUDA kernels (fatbin loaded by cseg.runtime.cuda.kernels through the driver API).
// The arithmetic is resample.h, the same as the CPU module's; built with --fmad=false so both give the same bits.
#include "resample.h"

extern "C" {

// frame: HxWx3 uint8 with element strides (sy, sx, sc); out: [3, size, size] float32. One thread per output pixel.
__global__ void cseg_preprocess(const unsigned char* frame, int in_h, int in_w, long long sy, long long sx,
                                long long sc, int bgr, float* out, int size, float mean0, float mean1, float mean2,
                                float std0, float std1, float std2) {
    const int x = blockIdx.x * blockDim.x + threadIdx.x;
    const int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= size || y >= size) return;
    const cseg::AaSpan col = cseg::aa_span(in_w, size, x), row = cseg::aa_span(in_h, size, y);
    const float col_total = cseg::aa_total(col), row_total = cseg::aa_total(row);
    const float mean[3] = {mean0, mean1, mean2}, stdv[3] = {std0, std1, std2};
    for (int c = 0; c < 3; ++c) {
        const long long channel = (bgr ? 2 - c : c) * sc;
        float sum = 0.0f;
        for (int ty = 0; ty < row.count; ++ty) {
            const unsigned char* p = frame + (long long)(row.start + ty) * sy + (long long)col.start * sx + channel;
            float line = 0.0f;
            for (int tx = 0; tx < col.count; ++tx)
                line += cseg::aa_weight(col, tx, col_total) * (float)p[tx * sx];
            sum += cseg::aa_weight(row, ty, row_total) * line;
        }
        out[((long long)c * size + y) * size + x] = cseg::normalise_grey(sum, mean[c], stdv[c]);
    }
}

// logits: [K, h, w] float32; out: [K, H, W] 0/1 bytes. Masks whose score is at or below the threshold are skipped
// (scores may be null: every mask is produced); bicubic != 0: OpenCV's INTER_CUBIC instead of torch's bilinear.
// One thread per output pixel; blockIdx.z is the mask.
__global__ void cseg_upsample_threshold(const float* logits, int in_h, int in_w, const float* scores,
                                        float threshold, unsigned char* out, int out_h, int out_w, int bicubic) {
    const int x = blockIdx.x * blockDim.x + threadIdx.x;
    const int y = blockIdx.y * blockDim.y + threadIdx.y;
    const int mask = blockIdx.z;
    if (x >= out_w || y >= out_h) return;
    if (scores != nullptr && !(scores[mask] > threshold)) return;
    const float* plane = logits + (long long)mask * in_h * in_w;
    float value;
    if (bicubic) {
        const cseg::CubicTap col = cseg::cubic_tap(in_w, out_w, x), row = cseg::cubic_tap(in_h, out_h, y);
        float lines[4];
        for (int k = 0; k < 4; ++k) {
            const float* line = plane + (long long)row.index[k] * in_w;
            lines[k] = cseg::cubic_mix(line[col.index[0]], line[col.index[1]], line[col.index[2]], line[col.index[3]],
                                       col.weight[0], col.weight[1], col.weight[2], col.weight[3]);
        }
        value = cseg::cubic_mix(lines[0], lines[1], lines[2], lines[3], row.weight[0], row.weight[1], row.weight[2],
                                row.weight[3]);
    } else {
        const cseg::LinearTap col = cseg::linear_tap(in_w, out_w, x), row = cseg::linear_tap(in_h, out_h, y);
        const float* top = plane + (long long)row.first * in_w;
        const float* bottom = plane + (long long)row.second * in_w;
        const float upper = cseg::lerp_taps(top[col.first], top[col.second], col.w_first, col.w_second);
        const float lower = cseg::lerp_taps(bottom[col.first], bottom[col.second], col.w_first, col.w_second);
        value = cseg::lerp_taps(upper, lower, row.w_first, row.w_second);
    }
    out[((long long)mask * out_h + y) * out_w + x] = value > 0.0f;
}

}  // extern "C"
