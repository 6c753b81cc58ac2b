// Argument checks shared by the CPU and CUDA implementations. They raise ValueError /
// TypeError in Python (TORCH_CHECK_VALUE / TORCH_CHECK_TYPE) with the same wording as
// pic_core.ops.check_align_inputs, so a caller sees one message whichever path ran.
//
// Each message is built as one std::string from std::to_string / snprintf pieces and handed to
// the check whole, so no iostream is instantiated in this extension: on a machine whose
// compiler is newer than the libstdc++ loaded at run time (GCC 13 headers, an older library),
// an ostringstream made here segfaulted where it should have raised (seen on an H200 machine).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>

namespace fedpic {

inline std::string text(int64_t value) { return std::to_string(value); }

inline std::string text(double value) {
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), "%g", value);
  return buffer;
}

inline std::string text(c10::IntArrayRef sizes) {
  std::string out = "[";
  for (size_t i = 0; i < sizes.size(); ++i) {
    out += (i ? ", " : "") + std::to_string(sizes[i]);
  }
  return out + "]";
}

inline std::string text(c10::ScalarType type) { return c10::toString(type); }

inline std::string text(const c10::Device& device) { return device.str(); }

inline void check_float_dtype(const at::Tensor& tensor, const char* name) {
  TORCH_CHECK_TYPE(tensor.scalar_type() == at::kFloat || tensor.scalar_type() == at::kDouble,
                   std::string("roi_rod_align: the compiled op takes float32 or float64 ") + name + ", got " +
                       text(tensor.scalar_type()) + " (pic_core.ops.roi_rod_align casts other float dtypes)");
}

inline void check_common_args(const at::Tensor& boxes, double spatial_scale, int64_t output_size) {
  TORCH_CHECK_VALUE(boxes.dim() == 2 && boxes.size(1) == 5,
                    "roi_rod_align: boxes must be (K, 5) = [batch_index, x1, y1, x2, y2], got " + text(boxes.sizes()));
  TORCH_CHECK_VALUE(output_size >= 1, "roi_rod_align: output_size must be >= 1, got " + text(output_size));
  TORCH_CHECK_VALUE(std::isfinite(spatial_scale) && spatial_scale > 0,
                    "roi_rod_align: spatial_scale must be a positive finite number, got " + text(spatial_scale));
}

inline void check_map_size(int64_t height, int64_t width) {
  TORCH_CHECK_VALUE(height >= 2 && width >= 2,
                    "roi_rod_align: feature map must be at least 2x2, got (" + text(height) + ", " + text(width) + ")");
}

// Forward: features (N, C, H, W) float32/float64, boxes (K, 5) on the same device.
inline void check_forward_args(const at::Tensor& features, const at::Tensor& boxes, double spatial_scale,
                               int64_t output_size) {
  TORCH_CHECK_VALUE(features.dim() == 4,
                    "roi_rod_align: features must be (N, C, H, W), got shape " + text(features.sizes()));
  check_float_dtype(features, "features");
  TORCH_CHECK_VALUE(boxes.device() == features.device(),
                    "roi_rod_align: boxes on " + text(boxes.device()) + " but features on " + text(features.device()));
  check_common_args(boxes, spatial_scale, output_size);
  check_map_size(features.size(2), features.size(3));
}

// Backward: grad (K, 2C, A, A) for a map of (N, C, H, W).
inline void check_backward_args(const at::Tensor& grad, const at::Tensor& boxes, double spatial_scale,
                                int64_t output_size, int64_t batch, int64_t channels, int64_t height,
                                int64_t width) {
  check_float_dtype(grad, "gradients");
  TORCH_CHECK_VALUE(boxes.device() == grad.device(),
                    "roi_rod_align: boxes on " + text(boxes.device()) + " but gradients on " + text(grad.device()));
  check_common_args(boxes, spatial_scale, output_size);
  check_map_size(height, width);
  TORCH_CHECK_VALUE(batch >= 0 && channels >= 0, "roi_rod_align: bad feature shape (" + text(batch) + ", " +
                                                     text(channels) + ", " + text(height) + ", " + text(width) + ")");
  const bool shape_ok = grad.dim() == 4 && grad.size(0) == boxes.size(0) && grad.size(1) == 2 * channels &&
                        grad.size(2) == output_size && grad.size(3) == output_size;
  TORCH_CHECK_VALUE(shape_ok, "roi_rod_align: gradient must be (" + text(boxes.size(0)) + ", " + text(2 * channels) +
                                  ", " + text(output_size) + ", " + text(output_size) + "), got " + text(grad.sizes()));
}

// Messages for bad box values; the device-specific code decides when they apply.
[[noreturn]] inline void fail_non_finite_boxes() {
  TORCH_CHECK_VALUE(false, "roi_rod_align: boxes contain NaN or infinite values");
  TORCH_INTERNAL_ASSERT(false);  // unreachable; keeps [[noreturn]] honest
}

[[noreturn]] inline void fail_batch_index(int64_t batch, double low, double high) {
  TORCH_CHECK_VALUE(false, "roi_rod_align: batch indices must be integers in [0, " + text(batch - 1) +
                               "], got range [" + text(low) + ", " + text(high) + "]");
  TORCH_INTERNAL_ASSERT(false);
}

}  // namespace fedpic
