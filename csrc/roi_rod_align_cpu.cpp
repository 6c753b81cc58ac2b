// CPU kernels of fedpic::roi_rod_align and fedpic::roi_rod_align_backward.
//
// The map is first copied to channels-last (N, H, W, C), so every bilinear tap reads or writes
// one contiguous run of C values and the inner loops vectorize over channels.
// Forward runs in parallel over boxes and writes each box's output directly (no (K, C, H, W)
// intermediate). The RoD grid does not depend on the box (a box only masks grid samples), so
// the grid is sampled once per image and each box only masks and pools it.
// Backward groups the boxes by image and splits them into work units. Every unit owns a
// channels-last accumulator for its image plus a (P, P, C) accumulator of RoD grid gradients,
// so no two threads ever write the same memory. At the end the units of an image are summed,
// the grid gradients go through the fixed grid's bilinear taps once per image (not once per
// box), and the result is written back in (N, C, H, W). The unit split depends only on K and
// the thread count, so results do not depend on scheduling.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <memory>
#include <vector>

#include "align_checks.h"
#include "roi_rod_align.h"

namespace fedpic {
namespace {

// Roughly how many multiply-adds one parallel task should get before splitting pays off.
constexpr int64_t kGrainWork = 1 << 15;
// Smallest number of boxes a backward work unit gets.
constexpr int64_t kMinUnitBoxes = 16;

struct MapShape {
  int64_t batch, channels, height, width;
  int64_t output, points;  // A and P = A + 1

  int64_t image_size() const { return height * width * channels; }  // one channels-last image
  int64_t grid_size() const { return points * points * channels; }  // one (P, P, C) sample set
  int64_t out_plane() const { return output * output; }
};

int64_t grain_for(int64_t work_per_item) { return std::max<int64_t>(1, kGrainWork / std::max<int64_t>(1, work_per_item)); }

// The RoD grid of one map size: coordinates (for the box mask) and bilinear taps per axis.
template <typename T>
struct RodGrid {
  std::vector<T> y, x;
  std::vector<AxisTap<T>> tap_y, tap_x;

  explicit RodGrid(const MapShape& s) : y(s.points), x(s.points), tap_y(s.points), tap_x(s.points) {
    const int h = static_cast<int>(s.height), w = static_cast<int>(s.width), a = static_cast<int>(s.output);
    for (int k = 0; k < s.points; ++k) {
      y[k] = rod_coord<T>(h, k, a);
      x[k] = rod_coord<T>(w, k, a);
      tap_y[k] = axis_tap(y[k], h);
      tap_x[k] = axis_tap(x[k], w);
    }
  }
};

// One box's sampling plan: RoI taps per axis and the RoD keep mask (P x P; 1 keeps, 0 zeroes).
template <typename T>
struct BoxPlan {
  int64_t image = 0;
  std::vector<AxisTap<T>> tap_y, tap_x;
  std::vector<T> keep;

  explicit BoxPlan(const MapShape& s) : tap_y(s.points), tap_x(s.points), keep(s.points * s.points) {}

  void build(const T* box, T scale, const MapShape& s, const RodGrid<T>& grid) {
    image = static_cast<int64_t>(box[0]);
    const T x1 = box[1] * scale, y1 = box[2] * scale, x2 = box[3] * scale, y2 = box[4] * scale;
    const int h = static_cast<int>(s.height), w = static_cast<int>(s.width), a = static_cast<int>(s.output);
    for (int k = 0; k < s.points; ++k) {
      tap_y[k] = axis_tap(roi_coord(y1, y2, k, a), h);
      tap_x[k] = axis_tap(roi_coord(x1, x2, k, a), w);
    }
    for (int64_t p = 0; p < s.points; ++p) {
      const bool in_y = inside(grid.y[p], y1, y2);
      for (int64_t q = 0; q < s.points; ++q) {
        keep[p * s.points + q] = (in_y && inside(grid.x[q], x1, x2)) ? T(0) : T(1);
      }
    }
  }
};

// dst[c] = bilinear sample of a channels-last image at taps (ty, tx); zero outside the map.
template <typename T>
inline void gather_sample(const T* image, const MapShape& s, const AxisTap<T>& ty, const AxisTap<T>& tx,
                          T* __restrict__ dst) {
  const int64_t channels = s.channels;
  if (ty.index < 0 || tx.index < 0) {
    std::fill(dst, dst + channels, T(0));
    return;
  }
  const T* __restrict__ a = image + (ty.index * s.width + tx.index) * channels;
  const T* __restrict__ b = a + channels;
  const T* __restrict__ c = a + s.width * channels;
  const T* __restrict__ d = c + channels;
  const T wa = ty.w0 * tx.w0, wb = ty.w0 * tx.w1, wc = ty.w1 * tx.w0, wd = ty.w1 * tx.w1;
  for (int64_t ch = 0; ch < channels; ++ch) {
    dst[ch] = wa * a[ch] + wb * b[ch] + wc * c[ch] + wd * d[ch];
  }
}

template <typename T>
inline void axpy(int64_t n, T weight, const T* __restrict__ x, T* __restrict__ y) {
  for (int64_t i = 0; i < n; ++i) {
    y[i] += weight * x[i];
  }
}

// Adjoint of gather_sample: image += taps (x) src.
template <typename T>
inline void scatter_sample(T* image, const MapShape& s, const AxisTap<T>& ty, const AxisTap<T>& tx, const T* src) {
  if (ty.index < 0 || tx.index < 0) {
    return;
  }
  const int64_t channels = s.channels;
  T* top = image + (ty.index * s.width + tx.index) * channels;
  T* bottom = top + s.width * channels;
  axpy(channels, ty.w0 * tx.w0, src, top);
  axpy(channels, ty.w0 * tx.w1, src, top + channels);
  axpy(channels, ty.w1 * tx.w0, src, bottom);
  axpy(channels, ty.w1 * tx.w1, src, bottom + channels);
}

// Scratch space of one task for pooling and its adjoint.
template <typename T>
struct PoolScratch {
  std::vector<T> rows;    // (P, A, C): sums of horizontal neighbours
  std::vector<T> pooled;  // (A, A, C)

  explicit PoolScratch(const MapShape& s)
      : rows(s.points * s.output * s.channels), pooled(s.out_plane() * s.channels) {}
};

// 2x2 / stride-1 average pool of channels-last samples (P, P, C) into C output planes (A, A).
// Pooled separably on contiguous runs (vectorizes), then transposed to planes.
template <typename T>
inline void pool_to_planes(const T* samples, const MapShape& s, PoolScratch<T>& scratch, T* out) {
  const int64_t channels = s.channels, run = s.output * channels, row = s.points * channels;
  T* __restrict__ rows = scratch.rows.data();
  T* __restrict__ pooled = scratch.pooled.data();
  for (int64_t p = 0; p < s.points; ++p) {
    const T* __restrict__ src = samples + p * row;
    T* __restrict__ dst = rows + p * run;
    for (int64_t e = 0; e < run; ++e) {
      dst[e] = src[e] + src[e + channels];
    }
  }
  for (int64_t i = 0; i < s.output; ++i) {
    const T* __restrict__ upper = rows + i * run;
    const T* __restrict__ lower = upper + run;
    T* __restrict__ dst = pooled + i * run;
    for (int64_t e = 0; e < run; ++e) {
      dst[e] = T(0.25) * (upper[e] + lower[e]);
    }
  }
  const int64_t cells = s.out_plane();
  for (int64_t c = 0; c < channels; ++c) {
    T* __restrict__ plane = out + c * cells;
    for (int64_t cell = 0; cell < cells; ++cell) {
      plane[cell] = pooled[cell * channels + c];
    }
  }
}

// Adjoint of pool_to_planes: C gradient planes (A, A) -> channels-last sample gradients (P, P, C).
template <typename T>
inline void unpool_from_planes(const T* grad, const MapShape& s, PoolScratch<T>& scratch, T* samples) {
  const int64_t channels = s.channels, run = s.output * channels, cells = s.out_plane();
  T* __restrict__ rows = scratch.rows.data();
  T* __restrict__ pooled = scratch.pooled.data();
  for (int64_t c = 0; c < channels; ++c) {
    const T* __restrict__ plane = grad + c * cells;
    for (int64_t cell = 0; cell < cells; ++cell) {
      pooled[cell * channels + c] = T(0.25) * plane[cell];
    }
  }
  // Vertical adjoint: sample row p gets output rows p - 1 and p (where they exist).
  std::copy(pooled, pooled + run, rows);
  for (int64_t p = 1; p < s.output; ++p) {
    const T* __restrict__ upper = pooled + (p - 1) * run;
    const T* __restrict__ lower = upper + run;
    T* __restrict__ dst = rows + p * run;
    for (int64_t e = 0; e < run; ++e) {
      dst[e] = upper[e] + lower[e];
    }
  }
  std::copy(pooled + (s.output - 1) * run, pooled + s.output * run, rows + s.output * run);
  // Horizontal adjoint: sample column q gets output columns q - 1 and q.
  for (int64_t p = 0; p < s.points; ++p) {
    const T* __restrict__ src = rows + p * run;
    T* __restrict__ dst = samples + p * s.points * channels;
    std::copy(src, src + channels, dst);
    for (int64_t e = channels; e < run; ++e) {
      dst[e] = src[e - channels] + src[e];
    }
    std::copy(src + run - channels, src + run, dst + run);
  }
}

template <typename T>
void check_box_values(const T* boxes, int64_t num_boxes, int64_t batch) {
  bool bad_index = false;
  double low = std::numeric_limits<double>::infinity(), high = -low;
  for (int64_t k = 0; k < num_boxes; ++k) {
    const T* box = boxes + 5 * k;
    for (int v = 0; v < 5; ++v) {
      if (!std::isfinite(box[v])) {
        fail_non_finite_boxes();
      }
    }
    low = std::min<double>(low, box[0]);
    high = std::max<double>(high, box[0]);
    bad_index = bad_index || box[0] != std::floor(box[0]) || box[0] < 0 || box[0] >= T(batch);
  }
  if (bad_index) {
    fail_batch_index(batch, low, high);
  }
}

template <typename T>
void forward_impl(const T* image_nhwc, const T* boxes, T* out, int64_t num_boxes, const MapShape& s, T scale) {
  const int64_t points = s.points, channels = s.channels, cells = points * points;
  const RodGrid<T> grid(s);
  // RoD grid samples of every image, (N, P, P, C), shared by all boxes of that image.
  std::vector<T> rod(s.batch * s.grid_size());
  at::parallel_for(0, s.batch, grain_for(4 * s.grid_size()), [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      for (int64_t p = 0; p < points; ++p) {
        for (int64_t q = 0; q < points; ++q) {
          gather_sample(image_nhwc + n * s.image_size(), s, grid.tap_y[p], grid.tap_x[q],
                        rod.data() + n * s.grid_size() + (p * points + q) * channels);
        }
      }
    }
  });
  at::parallel_for(0, num_boxes, grain_for(8 * s.grid_size()), [&](int64_t begin, int64_t end) {
    BoxPlan<T> plan(s);
    PoolScratch<T> scratch(s);
    std::vector<T> samples(s.grid_size());
    for (int64_t k = begin; k < end; ++k) {
      plan.build(boxes + 5 * k, scale, s, grid);
      const T* image = image_nhwc + plan.image * s.image_size();
      T* box_out = out + k * 2 * channels * s.out_plane();
      for (int64_t p = 0; p < points; ++p) {
        for (int64_t q = 0; q < points; ++q) {
          gather_sample(image, s, plan.tap_y[p], plan.tap_x[q], samples.data() + (p * points + q) * channels);
        }
      }
      pool_to_planes(samples.data(), s, scratch, box_out);
      const T* image_rod = rod.data() + plan.image * s.grid_size();
      for (int64_t cell = 0; cell < cells; ++cell) {
        const T keep = plan.keep[cell];
        for (int64_t c = 0; c < channels; ++c) {
          samples[cell * channels + c] = keep * image_rod[cell * channels + c];
        }
      }
      pool_to_planes(samples.data(), s, scratch, box_out + channels * s.out_plane());
    }
  });
}

// A run of boxes of one image whose gradients one task accumulates privately.
struct WorkUnit {
  int64_t image, begin, end;  // [begin, end) indexes the image-sorted box order
};

template <typename T>
void backward_impl(const T* grad, const T* boxes, T* grad_features, int64_t num_boxes, const MapShape& s,
                   T scale) {
  const int64_t points = s.points, channels = s.channels, cells = points * points;
  const int64_t plane_in = s.height * s.width;
  const RodGrid<T> grid(s);

  // Stable counting sort of the boxes by image.
  std::vector<int64_t> start(s.batch + 1, 0), order(num_boxes);
  for (int64_t k = 0; k < num_boxes; ++k) {
    ++start[static_cast<int64_t>(boxes[5 * k]) + 1];
  }
  for (int64_t n = 0; n < s.batch; ++n) {
    start[n + 1] += start[n];
  }
  std::vector<int64_t> fill(start.begin(), start.end() - 1);
  for (int64_t k = 0; k < num_boxes; ++k) {
    order[fill[static_cast<int64_t>(boxes[5 * k])]++] = k;
  }

  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t chunk = std::max<int64_t>(kMinUnitBoxes, (num_boxes + threads - 1) / threads);
  std::vector<WorkUnit> units;
  std::vector<int64_t> first_unit(s.batch + 1);
  for (int64_t n = 0; n < s.batch; ++n) {
    first_unit[n] = static_cast<int64_t>(units.size());
    for (int64_t b = start[n]; b < start[n + 1]; b += chunk) {
      units.push_back({n, b, std::min(b + chunk, start[n + 1])});
    }
  }
  first_unit[s.batch] = static_cast<int64_t>(units.size());

  // Per unit: a channels-last image accumulator, then a (P, P, C) RoD grid accumulator.
  const int64_t stride = s.image_size() + s.grid_size();
  std::unique_ptr<T[]> acc(new T[units.size() * stride]);
  at::parallel_for(0, static_cast<int64_t>(units.size()), 1, [&](int64_t begin, int64_t end) {
    BoxPlan<T> plan(s);
    PoolScratch<T> scratch(s);
    std::vector<T> sample_grad(s.grid_size());
    for (int64_t u = begin; u < end; ++u) {
      T* image_acc = acc.get() + u * stride;
      T* grid_acc = image_acc + s.image_size();
      std::fill(image_acc, image_acc + stride, T(0));
      for (int64_t i = units[u].begin; i < units[u].end; ++i) {
        const int64_t k = order[i];
        plan.build(boxes + 5 * k, scale, s, grid);
        const T* box_grad = grad + k * 2 * channels * s.out_plane();
        unpool_from_planes(box_grad, s, scratch, sample_grad.data());
        for (int64_t p = 0; p < points; ++p) {
          for (int64_t q = 0; q < points; ++q) {
            scatter_sample(image_acc, s, plan.tap_y[p], plan.tap_x[q],
                           sample_grad.data() + (p * points + q) * channels);
          }
        }
        unpool_from_planes(box_grad + channels * s.out_plane(), s, scratch, sample_grad.data());
        for (int64_t cell = 0; cell < cells; ++cell) {
          if (plan.keep[cell] != T(0)) {
            axpy(channels, T(1), sample_grad.data() + cell * channels, grid_acc + cell * channels);
          }
        }
      }
    }
  });

  // Per image: sum its units, push the RoD grid gradient through the grid taps, write NCHW.
  at::parallel_for(0, s.batch, grain_for(4 * s.image_size()), [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      T* out = grad_features + n * channels * plane_in;
      if (first_unit[n] == first_unit[n + 1]) {
        std::fill(out, out + channels * plane_in, T(0));
        continue;
      }
      T* total = acc.get() + first_unit[n] * stride;
      for (int64_t u = first_unit[n] + 1; u < first_unit[n + 1]; ++u) {
        axpy(stride, T(1), acc.get() + u * stride, total);
      }
      const T* grid_total = total + s.image_size();
      for (int64_t p = 0; p < points; ++p) {
        for (int64_t q = 0; q < points; ++q) {
          scatter_sample(total, s, grid.tap_y[p], grid.tap_x[q], grid_total + (p * points + q) * channels);
        }
      }
      for (int64_t pixel = 0; pixel < plane_in; ++pixel) {
        for (int64_t c = 0; c < channels; ++c) {
          out[c * plane_in + pixel] = total[pixel * channels + c];
        }
      }
    }
  });
}

MapShape map_shape(int64_t batch, int64_t channels, int64_t height, int64_t width, int64_t output_size) {
  return MapShape{batch, channels, height, width, output_size, output_size + 1};
}

at::Tensor roi_rod_align_cpu(const at::Tensor& features, const at::Tensor& boxes, double spatial_scale,
                             int64_t output_size) {
  check_forward_args(features, boxes, spatial_scale, output_size);
  const MapShape s = map_shape(features.size(0), features.size(1), features.size(2), features.size(3), output_size);
  const int64_t num_boxes = boxes.size(0);
  at::Tensor out = at::empty({num_boxes, 2 * s.channels, output_size, output_size}, features.options());
  if (num_boxes == 0) {
    return out;
  }
  const at::Tensor image = features.permute({0, 2, 3, 1}).contiguous();
  const at::Tensor rois = boxes.to(features.scalar_type()).contiguous();
  AT_DISPATCH_FLOATING_TYPES(features.scalar_type(), "roi_rod_align_cpu", [&] {
    const scalar_t* box_data = rois.const_data_ptr<scalar_t>();
    check_box_values(box_data, num_boxes, s.batch);
    forward_impl<scalar_t>(image.const_data_ptr<scalar_t>(), box_data, out.mutable_data_ptr<scalar_t>(), num_boxes,
                           s, static_cast<scalar_t>(spatial_scale));
  });
  return out;
}

at::Tensor roi_rod_align_backward_cpu(const at::Tensor& grad, const at::Tensor& boxes, double spatial_scale,
                                      int64_t output_size, int64_t batch, int64_t channels, int64_t height,
                                      int64_t width) {
  check_backward_args(grad, boxes, spatial_scale, output_size, batch, channels, height, width);
  const MapShape s = map_shape(batch, channels, height, width, output_size);
  const int64_t num_boxes = boxes.size(0);
  at::Tensor grad_features = at::empty({batch, channels, height, width}, grad.options());
  if (num_boxes == 0) {
    return grad_features.zero_();
  }
  const at::Tensor grad_c = grad.contiguous();
  const at::Tensor rois = boxes.to(grad.scalar_type()).contiguous();
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "roi_rod_align_backward_cpu", [&] {
    const scalar_t* box_data = rois.const_data_ptr<scalar_t>();
    check_box_values(box_data, num_boxes, s.batch);
    backward_impl<scalar_t>(grad_c.const_data_ptr<scalar_t>(), box_data, grad_features.mutable_data_ptr<scalar_t>(),
                            num_boxes, s, static_cast<scalar_t>(spatial_scale));
  });
  return grad_features;
}

}  // namespace

TORCH_LIBRARY_IMPL(fedpic, CPU, m) {
  m.impl("roi_rod_align", &roi_rod_align_cpu);
  m.impl("roi_rod_align_backward", &roi_rod_align_backward_cpu);
}

}  // namespace fedpic
