// The CPU host path (runtime/kernels/host_kernels.cpp) without Python, for scripts/aarch64_check.sh: built for the
// machine and cross-built for aarch64 (a Jetson's CPU), run on deterministic inputs, each run writing every case's
// input and output to one file. The two files must be equal byte for byte (no FMA contraction on either side:
// -ffp-contract=off; IEEE single and double arithmetic otherwise), and tests/native/compare.py checks the outputs
// against the numpy/torch oracles of tests/oracles.py.
//
// File: "CSEGHP01", then records. Preprocess: int64 {0, height, width, size}, the frame as packed RGB [h, w, 3] uint8
// (what the view shows, whatever its layout), the output [3, size, size] float32. Masks: int64 {1, bicubic, k, in_h,
// in_w, count, out_h, out_w}, the logits [k, in_h, in_w] float32, the indices [count] int64, the masks
// [count, out_h, out_w] uint8.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "host_kernels.h"

namespace {

uint64_t state = 0x9E3779B97F4A7C15ull;
uint64_t next_random() {  // xorshift64: the same numbers on every machine
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
}

FILE* out_file = nullptr;
template <class T>
void write(const T* data, size_t count) {
    if (count && std::fwrite(data, sizeof(T), count, out_file) != count) throw std::runtime_error("write failed");
}
void write_header(std::vector<int64_t> fields) { write(fields.data(), fields.size()); }

enum class Layout { rgb, bgr, flipped, grey, planar, padded };

// One frame in `layout`: its bytes, the view of them, and the packed RGB it shows.
void preprocess_case(int64_t h, int64_t w, int64_t size, Layout layout) {
    std::vector<uint8_t> rgb(h * w * 3);
    for (auto& v : rgb) v = static_cast<uint8_t>(next_random() >> 56);
    if (layout == Layout::grey)
        for (int64_t p = 0; p < h * w; ++p) rgb[p * 3 + 1] = rgb[p * 3 + 2] = rgb[p * 3];
    std::vector<uint8_t> bytes(h * (w + 2) * 4 + 8);
    cseg::FrameView view{bytes.data(), h, w, {3 * w, 3, 1}};
    const auto at = [&](int64_t y, int64_t x, int c) { return rgb[(y * w + x) * 3 + c]; };
    for (int64_t y = 0; y < h; ++y)
        for (int64_t x = 0; x < w; ++x)
            for (int c = 0; c < 3; ++c) switch (layout) {
                    case Layout::rgb: bytes[(y * w + x) * 3 + c] = at(y, x, c); break;
                    case Layout::bgr: bytes[(y * w + x) * 3 + 2 - c] = at(y, x, c); break;
                    case Layout::flipped: bytes[((h - 1 - y) * w + (w - 1 - x)) * 3 + c] = at(y, x, c); break;
                    case Layout::grey: bytes[y * w + x] = at(y, x, 0); break;
                    case Layout::planar: bytes[c * h * w + y * w + x] = at(y, x, c); break;
                    case Layout::padded: bytes[y * (w + 2) * 4 + x * 4 + c] = at(y, x, c); break;
                }
    if (layout == Layout::flipped) view = {bytes.data() + ((h - 1) * w + (w - 1)) * 3, h, w, {-3 * w, -3, 1}};
    if (layout == Layout::grey) view.stride[0] = w, view.stride[1] = 1, view.stride[2] = 0;
    if (layout == Layout::planar) view.stride[0] = w, view.stride[1] = 1, view.stride[2] = h * w;
    if (layout == Layout::padded) view.stride[0] = (w + 2) * 4, view.stride[1] = 4;
    const float mean[3] = {0.5f, 0.5f, 0.5f}, std_[3] = {0.5f, 0.5f, 0.5f};
    std::vector<float> pixels(3 * size * size);
    cseg::preprocess(view, layout == Layout::bgr, mean, std_, pixels.data(), size);
    write_header({0, h, w, size});
    write(rgb.data(), rgb.size());
    write(pixels.data(), pixels.size());
}

void masks_case(bool bicubic, int64_t k, int64_t in_h, int64_t in_w, std::vector<int64_t> select, int64_t out_h,
                int64_t out_w) {
    std::vector<float> logits(k * in_h * in_w);
    // uniform in [-4, 4) on a 2^-20 grid: values of either sign near 0, so that the threshold is exercised
    for (auto& v : logits) v = static_cast<float>(static_cast<int64_t>(next_random() >> 41) - (1 << 22)) / (1 << 20);
    const int64_t count = static_cast<int64_t>(select.size());
    std::vector<uint8_t> masks(count * out_h * out_w);
    cseg::upsample_threshold(logits.data(), k, in_h, in_w, select.data(), count, masks.data(), out_h, out_w, bicubic);
    write_header({1, bicubic, k, in_h, in_w, count, out_h, out_w});
    write(logits.data(), logits.size());
    write(select.data(), select.size());
    write(masks.data(), masks.size());
}

// The kernels' own refusals (the layer below the Python checks): each must throw, not read out of bounds.
int refusals() {
    int missing = 0;
    const auto expect_throw = [&](const char* what, auto call) {
        try {
            call();
            std::fprintf(stderr, "not refused: %s\n", what);
            ++missing;
        } catch (const std::exception&) {
        }
    };
    float logit = 1.0f, pixels[12];
    uint8_t mask[4], byte = 0;
    const float half[3] = {0.5f, 0.5f, 0.5f};
    const int64_t bad = 1, negative = -1;
    expect_throw("index out of range", [&] { cseg::upsample_threshold(&logit, 1, 1, 1, &bad, 1, mask, 2, 2, false); });
    expect_throw("negative index", [&] { cseg::upsample_threshold(&logit, 1, 1, 1, &negative, 1, mask, 2, 2, true); });
    expect_throw("empty logits", [&] { cseg::upsample_threshold(&logit, 1, 0, 1, &bad, 0, mask, 2, 2, false); });
    expect_throw("empty frame", [&] { cseg::preprocess({&byte, 0, 1, {3, 3, 1}}, false, half, half, pixels, 2); });
    expect_throw("huge frame", [&] {
        cseg::preprocess({&byte, 1, cseg::kMaxSide + 1, {0, 0, 0}}, false, half, half, pixels, 2);
    });
    return missing;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s OUT.bin\n", argv[0]);
        return 2;
    }
    out_file = std::fopen(argv[1], "wb");
    if (!out_file) return 2;
    std::fwrite("CSEGHP01", 1, 8, out_file);
    // shapes of the unit tests (tests/test_host_path.py) and a camera frame's, in every layout
    const int64_t frames[][3] = {{270, 480, 504}, {37, 53, 28}, {333, 500, 256}, {2, 2, 5}, {3000, 17, 64},
                                 {7, 9, 1},        {1, 1, 3},    {64, 64, 64},    {1, 900, 32}};
    for (const auto& f : frames)
        for (Layout layout : {Layout::rgb, Layout::bgr, Layout::flipped, Layout::grey, Layout::planar, Layout::padded})
            preprocess_case(f[0], f[1], f[2], layout);
    struct Masks {
        int64_t k, in_h, in_w, out_h, out_w;
    };
    const Masks shapes[] = {{3, 288, 288, 480, 640}, {2, 96, 80, 401, 600}, {1, 24, 24, 7, 13}, {2, 1, 5, 3, 11},
                            {4, 17, 9, 1, 1},        {1, 1, 1, 5, 4},       {2, 50, 60, 50, 60}, {1, 300, 200, 37, 29},
                            {2, 2, 2, 9, 7},         {1, 3, 700, 5, 1500}};
    for (bool bicubic : {false, true})
        for (const Masks& m : shapes) {
            std::vector<int64_t> select;  // every mask, last first, and the first again
            for (int64_t i = m.k - 1; i >= 0; --i) select.push_back(i);
            select.push_back(0);
            masks_case(bicubic, m.k, m.in_h, m.in_w, select, m.out_h, m.out_w);
        }
    std::fclose(out_file);
    const int missing = refusals();
    std::printf("%zu frames x 6 layouts, %zu mask shapes x 2 methods written to %s; threads %d; refusals %s\n",
                sizeof(frames) / sizeof(frames[0]), sizeof(shapes) / sizeof(shapes[0]), argv[1], cseg::thread_count(),
                missing ? "MISSING" : "ok");
    return missing ? 1 : 0;
}
