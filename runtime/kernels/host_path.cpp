// cseg.runtime.native: the per-frame host path on the CPU (SAM 3 preprocessing, mask upsampling + threshold,
// bilinear or bicubic), host_kernels.cpp bound with nanobind.
// Arguments are checked by the Python callers (cseg.images, cseg.runtime.postprocess); this layer and the kernels
// check only what would corrupt memory or lose the result. The GIL is released while the kernels run.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/vector.h>

#include <cstdint>
#include <stdexcept>
#include <vector>

#include "host_kernels.h"

namespace nb = nanobind;

namespace {

using Frame = nb::ndarray<const uint8_t, nb::ndim<3>, nb::device::cpu>;
using Pixels = nb::ndarray<float, nb::ndim<4>, nb::c_contig, nb::device::cpu>;
using Logits = nb::ndarray<const float, nb::ndim<3>, nb::c_contig, nb::device::cpu>;
using Masks = nb::ndarray<uint8_t, nb::ndim<3>, nb::c_contig, nb::device::cpu>;
using Select = nb::ndarray<const int64_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;

// frame: HxWx3 uint8 with any strides (a channel stride of 0 serves a grey frame without copying it);
// out: [1, 3, size, size] float32.
void preprocess(Frame frame, Pixels out, bool bgr, std::vector<float> mean, std::vector<float> std_) {
    if (frame.shape(2) != 3) throw std::invalid_argument("preprocess: the frame must be HxWx3");
    if (out.shape(0) != 1 || out.shape(1) != 3 || out.shape(2) != out.shape(3))
        throw std::invalid_argument("preprocess: out must be [1, 3, size, size]");
    if (mean.size() != 3 || std_.size() != 3) throw std::invalid_argument("preprocess: mean and std take 3 values");
    const int64_t height = static_cast<int64_t>(frame.shape(0)), width = static_cast<int64_t>(frame.shape(1));
    const cseg::FrameView view{frame.data(), height, width, {frame.stride(0), frame.stride(1), frame.stride(2)}};
    nb::gil_scoped_release release;
    cseg::preprocess(view, bgr, mean.data(), std_.data(), out.data(), static_cast<int64_t>(out.shape(2)));
}

// logits: [K, h, w] float32; select: indices into K (the masks to produce); out: [len(select), H, W] as 0/1 bytes;
// bicubic: OpenCV's INTER_CUBIC instead of torch's bilinear.
void upsample_threshold(Logits logits, Select select, Masks out, bool bicubic) {
    if (out.shape(0) != select.shape(0))
        throw std::invalid_argument("upsample_threshold: out must hold one mask per selected index");
    nb::gil_scoped_release release;
    const auto side = [](size_t n) { return static_cast<int64_t>(n); };
    cseg::upsample_threshold(logits.data(), side(logits.shape(0)), side(logits.shape(1)), side(logits.shape(2)),
                             select.data(), side(select.shape(0)), out.data(), side(out.shape(1)), side(out.shape(2)),
                             bicubic);
}

}  // namespace

NB_MODULE(native, m) {
    m.doc() = "cseg's per-frame host path on the CPU (one definition per kernel, shared with the CUDA fatbin)";
    // The frame and the output buffers are taken as they are (noconvert): nanobind would otherwise convert a
    // non-contiguous or mistyped `out` into a temporary copy, and the result would be written there and lost.
    m.def("preprocess", &preprocess, nb::arg("frame").noconvert(), nb::arg("out").noconvert(), nb::arg("bgr"),
          nb::arg("mean"), nb::arg("std"));
    m.def("upsample_threshold", &upsample_threshold, nb::arg("logits"), nb::arg("select"), nb::arg("out").noconvert(),
          nb::arg("bicubic") = false);
    m.def("thread_count", &cseg::thread_count);
}
