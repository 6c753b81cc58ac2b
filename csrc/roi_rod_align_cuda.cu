// CUDA kernels of fedpic::roi_rod_align and fedpic::roi_rod_align_backward (extension
// `pic_core._C_cuda`; the schemas are defined by `pic_core._C`).
//
// Forward: one thread per output cell (k, c, i, j) computes both the RoI and the RoD value from
// its four sample points, so one launch produces the whole (K, 2C, A, A) output.
// Backward: one thread per sample point (k, c, p, q) folds the pooling adjoint (up to four output
// cells), adds the RoI gradient to the map with four atomics, and adds the RoD gradient to an
// (N, C, P, P) grid buffer with one atomic: every box of an image shares the same RoD grid
// sample, so the boxes are reduced there first and a second kernel pushes each grid sample
// through its bilinear taps once, instead of once per box. Atomics make the summation order
// vary, so the backward is flagged as nondeterministic (torch.use_deterministic_algorithms).
// Box values are checked once, in the forward, by a single-block kernel and a 4-byte readback.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "align_checks.h"
#include "roi_rod_align_cuda_kernels.h"

namespace fedpic {
namespace {

using namespace cuda_kernels;

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535;

int blocks_for(int64_t total) {
  return static_cast<int>(std::min<int64_t>((total + kThreads - 1) / kThreads, kMaxBlocks));
}

// Box value checks: one single-block kernel and one 4-byte readback (the op's only host sync),
// with the same errors as on the CPU.
void check_box_values(const at::Tensor& rois, int64_t batch, cudaStream_t stream) {
  at::Tensor flags = at::empty({1}, rois.options().dtype(at::kInt));
  AT_DISPATCH_FLOATING_TYPES(rois.scalar_type(), "roi_rod_align_check_boxes", [&] {
    check_boxes_kernel<scalar_t><<<1, kThreads, 0, stream>>>(rois.const_data_ptr<scalar_t>(), rois.size(0), batch,
                                                             flags.mutable_data_ptr<int>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  const int bad = flags.item<int>();
  if (bad & 1) {
    fail_non_finite_boxes();
  }
  if (bad & 2) {
    const at::Tensor index = rois.select(1, 0);
    fail_batch_index(batch, index.min().item<double>(), index.max().item<double>());
  }
}

at::Tensor roi_rod_align_cuda(const at::Tensor& features, const at::Tensor& boxes, double spatial_scale,
                              int64_t output_size) {
  check_forward_args(features, boxes, spatial_scale, output_size);
  const c10::cuda::CUDAGuard guard(features.device());
  const int64_t num_boxes = boxes.size(0), channels = features.size(1);
  at::Tensor out = at::empty({num_boxes, 2 * channels, output_size, output_size}, features.options());
  const int64_t total = num_boxes * channels * output_size * output_size;
  if (total == 0) {
    return out;
  }
  const at::Tensor map = features.contiguous();
  const at::Tensor rois = boxes.to(features.scalar_type()).contiguous();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  check_box_values(rois, features.size(0), stream);
  AT_DISPATCH_FLOATING_TYPES(features.scalar_type(), "roi_rod_align_cuda", [&] {
    forward_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
        map.const_data_ptr<scalar_t>(), rois.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), total,
        features.size(0), static_cast<int>(channels), static_cast<int>(features.size(2)), static_cast<int>(features.size(3)),
        static_cast<int>(output_size), static_cast<scalar_t>(spatial_scale));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor roi_rod_align_backward_cuda(const at::Tensor& grad, const at::Tensor& boxes, double spatial_scale,
                                       int64_t output_size, int64_t batch, int64_t channels, int64_t height,
                                       int64_t width) {
  check_backward_args(grad, boxes, spatial_scale, output_size, batch, channels, height, width);
  const c10::cuda::CUDAGuard guard(grad.device());
  at::Tensor grad_features = at::zeros({batch, channels, height, width}, grad.options());
  const int64_t points = output_size + 1;
  const int64_t total = boxes.size(0) * channels * points * points;
  if (total == 0) {
    return grad_features;
  }
  at::globalContext().alertNotDeterministic("fedpic::roi_rod_align_backward (CUDA)");
  const at::Tensor grad_c = grad.contiguous();
  // Box values were checked by the forward; the kernels skip out-of-range images rather than
  // sync again here.
  const at::Tensor rois = boxes.to(grad.scalar_type()).contiguous();
  at::Tensor grid_grad = at::zeros({batch, channels, points, points}, grad.options());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "roi_rod_align_backward_cuda", [&] {
    backward_samples_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
        grad_c.const_data_ptr<scalar_t>(), rois.const_data_ptr<scalar_t>(), grad_features.mutable_data_ptr<scalar_t>(),
        grid_grad.mutable_data_ptr<scalar_t>(), total, batch, static_cast<int>(channels), static_cast<int>(height),
        static_cast<int>(width), static_cast<int>(output_size), static_cast<scalar_t>(spatial_scale));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const int64_t grid_total = grid_grad.numel();
    backward_grid_kernel<scalar_t><<<blocks_for(grid_total), kThreads, 0, stream>>>(
        grid_grad.const_data_ptr<scalar_t>(), grad_features.mutable_data_ptr<scalar_t>(), grid_total,
        static_cast<int>(height), static_cast<int>(width), static_cast<int>(output_size));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_features;
}

}  // namespace

TORCH_LIBRARY_IMPL(fedpic, CUDA, m) {
  m.impl("roi_rod_align", &roi_rod_align_cuda);
  m.impl("roi_rod_align_backward", &roi_rod_align_backward_cuda);
}

}  // namespace fedpic
