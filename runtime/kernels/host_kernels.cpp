// The CPU host path (host_kernels.h): row loops over resample.h's arithmetic, their AVX2 variants on x86-64 and the
// threads. No Python here: host_path.cpp binds it as cseg.runtime.native, tests/native/harness.cpp runs it alone.
#include "host_kernels.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "resample.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace cseg {

int thread_count() {
    if (const char* env = std::getenv("CSEG_NATIVE_THREADS")) {
        const int requested = std::atoi(env);
        if (requested > 0) return requested;
    }
    return std::max(1u, std::thread::hardware_concurrency());
}

namespace {

// Runs body(begin, end) over [0, n). Threads take small chunks in turn rather than one share each: a thread the OS
// preempts (a shared CPU, a Jetson busy with its camera pipeline) then delays only its current chunk.
template <class Body>
void parallel_for(int64_t n, const Body& body) {
    const int64_t workers = std::min<int64_t>(thread_count(), n);
    if (workers <= 1) {
        if (n > 0) body(0, n);
        return;
    }
    const int64_t chunk = std::max<int64_t>(1, n / (workers * 8));
    std::atomic<int64_t> next{0};
    std::exception_ptr failure;  // an exception escaping a thread would terminate the process: rethrown here instead
    std::mutex failure_lock;
    const auto work = [&] {
        try {
            for (int64_t begin = next.fetch_add(chunk); begin < n; begin = next.fetch_add(chunk))
                body(begin, std::min(n, begin + chunk));
        } catch (...) {
            std::lock_guard<std::mutex> hold(failure_lock);
            if (!failure) failure = std::current_exception();
            next = n;  // the other threads stop at their next chunk
        }
    };
    std::vector<std::thread> threads;
    for (int64_t i = 1; i < workers; ++i) threads.emplace_back(work);
    work();
    for (auto& thread : threads) thread.join();
    if (failure) std::rethrow_exception(failure);
}

// Rows of an intermediate (horizontally resampled) image, computed on first use and kept while consecutive output
// rows need them: each source row is filtered once per thread instead of once per output row.
class RowCache {
  public:
    RowCache(int slots, int64_t width) : width_(width), tags_(slots, -1), data_(slots * width) {}

    template <class Fill>
    const float* row(int64_t index, const Fill& fill) {
        const int slot = static_cast<int>(index % static_cast<int64_t>(tags_.size()));
        float* out = data_.data() + slot * width_;
        if (tags_[slot] != index) {
            fill(index, out);
            tags_[slot] = index;
        }
        return out;
    }

  private:
    int64_t width_;
    std::vector<int64_t> tags_;
    std::vector<float> data_;
};

// The hot loops, one output row at a time. On x86-64 each is also compiled for AVX2 (x86-64-v3) and picked at load
// time; FMA stays off (-ffp-contract=off), so every variant gives the same bits as the plain one and as CUDA.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CSEG_ROW_LOOP __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define CSEG_ROW_LOOP
#endif

// Antialiased taps of one axis as tap-major tables, padded to the widest span with weight 0 (adding 0 * pixel does
// not change a sum), so the inner loops run over output pixels and vectorise.
struct AaTable {
    int taps = 0;
    std::vector<cseg::AaSpan> spans;
    std::vector<int32_t> index;  // [taps][out]: source index, clamped into the image
    std::vector<float> weight;   // [taps][out]

    AaTable(int in_size, int out_size) : spans(out_size) {
        std::vector<float> totals(out_size);
        for (int i = 0; i < out_size; ++i) {
            spans[i] = cseg::aa_span(in_size, out_size, i);
            totals[i] = cseg::aa_total(spans[i]);
            taps = std::max(taps, spans[i].count);
        }
        index.resize(static_cast<size_t>(taps) * out_size);
        weight.resize(static_cast<size_t>(taps) * out_size);
        for (int tap = 0; tap < taps; ++tap)
            for (int i = 0; i < out_size; ++i) {
                const bool inside = tap < spans[i].count;
                index[static_cast<size_t>(tap) * out_size + i] = std::min(spans[i].start + tap, in_size - 1);
                const float w = inside ? cseg::aa_weight(spans[i], tap, totals[i]) : 0.0f;
                weight[static_cast<size_t>(tap) * out_size + i] = w;
            }
    }
};

// source[index * stride]: one channel of an interleaved row (stride 3) or a plane (stride 1)
CSEG_ROW_LOOP void gather_taps(const float* __restrict source, int stride, const int32_t* __restrict index,
                               const float* __restrict weight, int taps, int n, float* __restrict out) {
    for (int i = 0; i < n; ++i) out[i] = 0.0f;
    for (int tap = 0; tap < taps; ++tap, index += n, weight += n)
        for (int i = 0; i < n; ++i) out[i] += weight[i] * source[index[i] * stride];
}

CSEG_ROW_LOOP void to_float(const uint8_t* __restrict bytes, int64_t n, float* __restrict out) {
    for (int64_t i = 0; i < n; ++i) out[i] = static_cast<float>(bytes[i]);
}

CSEG_ROW_LOOP void weighted_rows(const float* const* rows, const float* weights, int count, int n,
                                 float* __restrict out) {
    for (int i = 0; i < n; ++i) out[i] = 0.0f;
    for (int tap = 0; tap < count; ++tap) {
        const float* __restrict row = rows[tap];
        const float w = weights[tap];
        for (int i = 0; i < n; ++i) out[i] += w * row[i];
    }
}

CSEG_ROW_LOOP void normalise_row(const float* __restrict sums, int n, float mean, float std_, float* __restrict out) {
    for (int i = 0; i < n; ++i) out[i] = cseg::normalise_grey(sums[i], mean, std_);
}

CSEG_ROW_LOOP void linear_row(const float* __restrict source, int in_w, const int32_t* __restrict first,
                              const int32_t* __restrict second, const float* __restrict w_first,
                              const float* __restrict w_second, int n, float* __restrict out) {
    (void)in_w;  // the AVX2 variant's bound check needs it; one signature serves both through the dispatch
    for (int i = 0; i < n; ++i) out[i] = cseg::lerp_taps(source[first[i]], source[second[i]], w_first[i], w_second[i]);
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
// Upsampling, 8 outputs at a time: their taps fall inside 8 consecutive source values, so one load and two
// permutes replace 16 scalar loads (the compiler's emulated gathers). Multiply and add stay separate (no FMA):
// the same bits as linear_row. Blocks whose taps spread wider, or reach past the row, take the plain loop.
__attribute__((target("avx2"))) void linear_row_avx2(const float* __restrict source, int in_w,
                                                     const int32_t* __restrict first, const int32_t* __restrict second,
                                                     const float* __restrict w_first, const float* __restrict w_second,
                                                     int n, float* __restrict out) {
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        const int base = first[i];
        if (second[i + 7] - base > 7 || base + 8 > in_w) {
            linear_row(source, in_w, first + i, second + i, w_first + i, w_second + i, 8, out + i);
            continue;
        }
        const __m256i offset = _mm256_set1_epi32(base);
        const __m256 window = _mm256_loadu_ps(source + base);
        const __m256 a = _mm256_permutevar8x32_ps(
            window, _mm256_sub_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(first + i)), offset));
        const __m256 b = _mm256_permutevar8x32_ps(
            window, _mm256_sub_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(second + i)), offset));
        _mm256_storeu_ps(out + i, _mm256_add_ps(_mm256_mul_ps(a, _mm256_loadu_ps(w_first + i)),
                                                _mm256_mul_ps(b, _mm256_loadu_ps(w_second + i))));
    }
    linear_row(source, in_w, first + i, second + i, w_first + i, w_second + i, n - i, out + i);
}

using LinearRow = decltype(&linear_row);
LinearRow pick_linear_row() {
    __builtin_cpu_init();  // this runs from a static initialiser
    return __builtin_cpu_supports("avx2") ? linear_row_avx2 : linear_row;
}
const LinearRow linear_row_best = pick_linear_row();
#else
const auto linear_row_best = linear_row;
#endif

CSEG_ROW_LOOP void threshold_row(const float* __restrict top, const float* __restrict bottom, float w_top,
                                 float w_bottom, int n, uint8_t* __restrict out) {
    for (int i = 0; i < n; ++i) out[i] = cseg::lerp_taps(top[i], bottom[i], w_top, w_bottom) > 0.0f;
}

// Bicubic, horizontally: index and weight are tap-major tables [4][n].
CSEG_ROW_LOOP void cubic_row(const float* __restrict source, const int32_t* __restrict index,
                             const float* __restrict weight, int n, float* __restrict out) {
    const int32_t *i0 = index, *i1 = index + n, *i2 = index + 2 * n, *i3 = index + 3 * n;
    const float *w0 = weight, *w1 = weight + n, *w2 = weight + 2 * n, *w3 = weight + 3 * n;
    for (int i = 0; i < n; ++i)
        out[i] = cseg::cubic_mix(source[i0[i]], source[i1[i]], source[i2[i]], source[i3[i]], w0[i], w1[i], w2[i],
                                 w3[i]);
}

CSEG_ROW_LOOP void cubic_threshold_row(const float* __restrict r0, const float* __restrict r1,
                                       const float* __restrict r2, const float* __restrict r3, const float* w, int n,
                                       uint8_t* __restrict out) {
    for (int i = 0; i < n; ++i) out[i] = cseg::cubic_mix(r0[i], r1[i], r2[i], r3[i], w[0], w[1], w[2], w[3]) > 0.0f;
}


// Sides of 0 would make clamped indices of -1 (a read before the buffer); sides beyond kMaxSide would overflow the
// int index arithmetic of the loops.
void check_side(const char* what, int64_t side, int64_t least) {
    if (side < least || side > kMaxSide)
        throw std::invalid_argument(std::string(what) + " is " + std::to_string(side) + "; it must be between " +
                                    std::to_string(least) + " and " + std::to_string(kMaxSide));
}

}  // namespace

void preprocess(const FrameView& frame, bool bgr, const float mean[3], const float std_[3], float* dst,
                int64_t out_size) {
    check_side("preprocess: the frame's height", frame.height, 1);
    check_side("preprocess: the frame's width", frame.width, 1);
    check_side("preprocess: the output size", out_size, 0);
    const int in_h = static_cast<int>(frame.height), in_w = static_cast<int>(frame.width);
    const int size = static_cast<int>(out_size);
    const int64_t sy = frame.stride[0], sx = frame.stride[1], sc = frame.stride[2];
    const uint8_t* src = frame.data;
    int channel[3];
    for (int c = 0; c < 3; ++c) channel[c] = bgr ? 2 - c : c;
    const AaTable columns(in_w, size), rows(in_h, size);
    const int64_t plane = static_cast<int64_t>(size) * size;

    parallel_for(size, [&](int64_t begin, int64_t end) {
        // a cached row holds the 3 channel planes of one source row, filtered horizontally to `size` samples
        RowCache cache(rows.taps + 1, 3 * static_cast<int64_t>(size));
        std::vector<float> values(3 * static_cast<int64_t>(in_w)), sums(size);
        const bool packed = sx == 3 && sc == 1;  // an interleaved row (RGB or BGR): converted in one pass
        const auto filter_row = [&](int64_t y, float* line) {
            const uint8_t* row = src + y * sy;
            if (packed) to_float(row, 3 * static_cast<int64_t>(in_w), values.data());
            for (int c = 0; c < 3; ++c) {
                float* plane_values = values.data() + static_cast<int64_t>(c) * in_w;
                const float* source = packed ? values.data() + channel[c] : plane_values;
                if (!packed)  // any other layout: one channel at a time, through its strides
                    for (int64_t x = 0; x < in_w; ++x) plane_values[x] = row[x * sx + channel[c] * sc];
                gather_taps(source, packed ? 3 : 1, columns.index.data(), columns.weight.data(), columns.taps, size,
                            line + static_cast<int64_t>(c) * size);
            }
        };
        std::vector<const float*> taps(rows.taps);
        std::vector<float> weights(rows.taps);
        for (int64_t y = begin; y < end; ++y) {
            const cseg::AaSpan& span = rows.spans[y];
            for (int tap = 0; tap < span.count; ++tap) {
                taps[tap] = cache.row(span.start + tap, filter_row);
                weights[tap] = rows.weight[static_cast<size_t>(tap) * size + y];
            }
            for (int c = 0; c < 3; ++c) {
                std::vector<const float*> planes(span.count);
                for (int tap = 0; tap < span.count; ++tap) planes[tap] = taps[tap] + static_cast<int64_t>(c) * size;
                weighted_rows(planes.data(), weights.data(), span.count, size, sums.data());
                normalise_row(sums.data(), size, mean[c], std_[c], dst + c * plane + y * size);
            }
        }
    });
}

namespace {

// The selected masks, one output row at a time over (mask, row) pairs. Each thread keeps the source rows it filtered
// horizontally (filter(source row, line)) while the next output rows need them: output row y reads the cached rows
// sources[y] (Taps consecutive indices, clamped: never two in one cache slot), and combine(rows, y, out) writes it.
template <int Taps, class Filter, class Combine>
void resample_masks(const float* src, int in_h, int in_w, const int64_t* chosen, int64_t count, uint8_t* dst,
                    int out_h, int out_w, const std::vector<std::array<int, Taps>>& sources, const Filter& filter,
                    const Combine& combine) {
    parallel_for(count * out_h, [&](int64_t begin, int64_t end) {
        RowCache cache(Taps, out_w);
        int64_t cached_mask = -1;
        for (int64_t item = begin; item < end; ++item) {
            const int64_t mask = item / out_h;
            const int y = static_cast<int>(item % out_h);
            if (mask != cached_mask) {
                cache = RowCache(Taps, out_w);
                cached_mask = mask;
            }
            const float* plane = src + chosen[mask] * in_h * in_w;
            const auto filter_row = [&](int64_t row, float* line) { filter(plane + row * in_w, line); };
            const float* rows[Taps];
            for (int k = 0; k < Taps; ++k) rows[k] = cache.row(sources[y][k], filter_row);
            combine(rows, y, dst + (mask * out_h + y) * out_w);
        }
    });
}

}  // namespace

void upsample_threshold(const float* src, int64_t k, int64_t source_h, int64_t source_w, const int64_t* chosen,
                        int64_t count, uint8_t* dst, int64_t target_h, int64_t target_w, bool bicubic) {
    check_side("upsample_threshold: the logits' height", source_h, 1);
    check_side("upsample_threshold: the logits' width", source_w, 1);
    check_side("upsample_threshold: the output height", target_h, 0);
    check_side("upsample_threshold: the output width", target_w, 0);
    for (int64_t i = 0; i < count; ++i)
        if (chosen[i] < 0 || chosen[i] >= k)
            throw std::out_of_range("upsample_threshold: index " + std::to_string(chosen[i]) + " out of range for " +
                                    std::to_string(k) + " masks");
    const int in_h = static_cast<int>(source_h), in_w = static_cast<int>(source_w);
    const int out_h = static_cast<int>(target_h), out_w = static_cast<int>(target_w);
    if (bicubic) {
        std::vector<int32_t> index(4 * static_cast<size_t>(out_w));  // tap-major [4][out_w]
        std::vector<float> weight(4 * static_cast<size_t>(out_w));
        for (int x = 0; x < out_w; ++x) {
            const cseg::CubicTap tap = cseg::cubic_tap(in_w, out_w, x);
            for (int t = 0; t < 4; ++t) index[t * out_w + x] = tap.index[t], weight[t * out_w + x] = tap.weight[t];
        }
        std::vector<cseg::CubicTap> rows(out_h);
        std::vector<std::array<int, 4>> sources(out_h);
        for (int y = 0; y < out_h; ++y) {
            rows[y] = cseg::cubic_tap(in_h, out_h, y);
            std::copy(rows[y].index, rows[y].index + 4, sources[y].begin());
        }
        resample_masks<4>(
            src, in_h, in_w, chosen, count, dst, out_h, out_w, sources,
            [&](const float* source, float* line) { cubic_row(source, index.data(), weight.data(), out_w, line); },
            [&](const float* const* r, int y, uint8_t* row) {
                cubic_threshold_row(r[0], r[1], r[2], r[3], rows[y].weight, out_w, row);
            });
        return;
    }
    std::vector<int32_t> first(out_w), second(out_w);
    std::vector<float> w_first(out_w), w_second(out_w);
    for (int x = 0; x < out_w; ++x) {
        const cseg::LinearTap tap = cseg::linear_tap(in_w, out_w, x);
        first[x] = tap.first, second[x] = tap.second, w_first[x] = tap.w_first, w_second[x] = tap.w_second;
    }
    std::vector<cseg::LinearTap> rows(out_h);
    std::vector<std::array<int, 2>> sources(out_h);
    for (int y = 0; y < out_h; ++y) {
        rows[y] = cseg::linear_tap(in_h, out_h, y);
        sources[y] = {rows[y].first, rows[y].second};
    }
    resample_masks<2>(
        src, in_h, in_w, chosen, count, dst, out_h, out_w, sources,
        [&](const float* source, float* line) {
            linear_row_best(source, in_w, first.data(), second.data(), w_first.data(), w_second.data(), out_w, line);
        },
        [&](const float* const* r, int y, uint8_t* row) {
            threshold_row(r[0], r[1], rows[y].w_first, rows[y].w_second, out_w, row);
        });
}

}  // namespace cseg
