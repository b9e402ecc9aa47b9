// Compiled CPU loops for the recurrent layers, loaded by cpu_kernels.py (the 'compiled' scan backend).
// Each one computes exactly what a plain-PyTorch function computes (tests hold them equal):
//   scan_forward / scan_backward            scan.SequentialScan
//   mingru_forward / mingru_backward        model.MinGRUCoefficients
//   minlstm_forward / minlstm_backward      model.MinLSTMCoefficients
//   selective_scan_forward / _backward      model.Mamba's softplus, scan_channels and gate (fused: no
//                                           (B, T, E, N) tensor)
//   causal_conv_forward / _backward         model.ShiftedSum (and the SiLU after it)
// Why: on a CPU those functions are a chain of PyTorch calls, each one a pass over memory (and, for
// the scan, two calls per time step). Here each is one pass, and the coefficient backwards recompute
// the gates from their pre-activations instead of saving them. All tensors are contiguous (B, T, C)
// float32 or float64; cpu_kernels.py makes sure of it.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <numeric>

namespace {

// Vector registers of the widest kind this build targets (cpu_kernels.py passes CPU_CAPABILITY as
// PyTorch detects it: 8 floats with AVX2); exp is Sleef's, as PyTorch's own kernels use it.
template <typename T>
using Vec = at::vec::Vectorized<T>;

// Runs body(offset, count) over [0, n) in steps of one vector; the last step may be partial (count < a
// vector), where loads fill the missing lanes with zeros and stores write count values only.
template <typename T, typename F>
inline void for_vectors(int64_t n, F body) {
  for (int64_t c = 0; c < n; c += Vec<T>::size()) body(c, std::min<int64_t>(Vec<T>::size(), n - c));
}

template <typename T>
inline Vec<T> load(const T* p, int64_t count) { return Vec<T>::loadu(p, count); }

// The exps of the elementwise parts are ATen's exp_u20, inlined (within 20 ulp in float32, the exp its
// softmax uses; the exact exp in float64): Sleef's exp is a call, which spills every live vector
// register around it.
template <typename T>
inline Vec<T> sigmoid(Vec<T> x) { return Vec<T>(1) / (Vec<T>(1) + x.neg().exp_u20()); }

// sigmoid(x) and sigmoid(-x) = 1 - sigmoid(x) from one exp, the second without cancellation near 1:
// e / (1 + e) with e = exp(-x), which is 1 where e overflows.
template <typename T>
inline void sigmoid_pair(Vec<T> x, Vec<T>& positive, Vec<T>& negative) {
  const Vec<T> e = x.neg().exp_u20();
  positive = Vec<T>(1) / (Vec<T>(1) + e);
  negative = Vec<T>::blendv(e * positive, Vec<T>(1), e == Vec<T>(INFINITY));
}

// The paper's g(x) = x + 1/2 for x >= 0, sigmoid(x) otherwise, as max(x + 1/2, sigmoid x); s = sigmoid(x).
template <typename T>
inline Vec<T> g(Vec<T> x, Vec<T> s) { return at::vec::maximum(x + Vec<T>(0.5), s); }

// g'(x): 1 for x > 0, sigmoid'(x) = s (1 - s) otherwise.
template <typename T>
inline Vec<T> g_derivative(Vec<T> x, Vec<T> s) {
  return Vec<T>::blendv(s * (Vec<T>(1) - s), Vec<T>(1), x > Vec<T>(0));
}

// Runs body(row) for rows [0, rows) on all threads; rows are (batch, time) positions.
template <typename F>
void for_rows(int64_t rows, F body) {
  at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) body(row);
  });
}

// Runs body(batch, c_begin, c_end) over blocks of channels: the scan runs along time, so threads split
// batch and channels. Blocks are as wide as leaves a few tasks per thread (each time step then reads
// one long contiguous run), 16 channels at the least.
template <typename F>
void for_channel_blocks(int64_t batch, int64_t channels, F body) {
  const int64_t wanted_blocks = (4 * at::get_num_threads() + batch - 1) / batch;
  const int64_t block = std::max<int64_t>(16, (channels + wanted_blocks - 1) / wanted_blocks);
  const int64_t blocks = (channels + block - 1) / block;
  at::parallel_for(0, batch * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t c_begin = (task % blocks) * block;
      body(task / blocks, c_begin, std::min(channels, c_begin + block));
    }
  });
}

}  // namespace

// h_t = a_t h_{t-1} + b_t, h_0 = h0 (B, C) or zero.
torch::Tensor scan_forward(torch::Tensor a, torch::Tensor b, c10::optional<torch::Tensor> h0) {
  auto h = torch::empty_like(b);
  const int64_t B = b.size(0), T = b.size(1), C = b.size(2);
  AT_DISPATCH_FLOATING_TYPES(b.scalar_type(), "scan_forward", [&] {
    const scalar_t* pa = a.data_ptr<scalar_t>();
    const scalar_t* pb = b.data_ptr<scalar_t>();
    const scalar_t* p0 = h0.has_value() ? h0->data_ptr<scalar_t>() : nullptr;
    scalar_t* ph = h.data_ptr<scalar_t>();
    for_channel_blocks(B, C, [&](int64_t i, int64_t c0, int64_t c1) {
      const int64_t start = i * T * C;
      for (int64_t c = c0; c < c1; ++c)
        ph[start + c] = pb[start + c] + (p0 ? pa[start + c] * p0[i * C + c] : scalar_t(0));
      for (int64_t t = 1; t < T; ++t) {
        const int64_t now = start + t * C, before = now - C;
        for (int64_t c = c0; c < c1; ++c) ph[now + c] = pb[now + c] + pa[now + c] * ph[before + c];
      }
    });
  });
  return h;
}

// The reverse recurrence g_t = dL/dh_t + a_{t+1} g_{t+1}; then dL/db_t = g_t, dL/da_t = g_t h_{t-1},
// dL/dh_0 = a_1 g_1. Returns (grad_a, grad_b, grad_h0 or an undefined tensor).
std::vector<torch::Tensor> scan_backward(torch::Tensor a, torch::Tensor h, c10::optional<torch::Tensor> h0,
                                         torch::Tensor grad_h) {
  auto grad_b = torch::empty_like(grad_h), grad_a = torch::empty_like(a);
  auto grad_h0 = h0.has_value() ? torch::empty_like(*h0) : torch::Tensor();
  const int64_t B = a.size(0), T = a.size(1), C = a.size(2);
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "scan_backward", [&] {
    const scalar_t* pa = a.data_ptr<scalar_t>();
    const scalar_t* ph = h.data_ptr<scalar_t>();
    const scalar_t* p0 = h0.has_value() ? h0->data_ptr<scalar_t>() : nullptr;
    const scalar_t* pgh = grad_h.data_ptr<scalar_t>();
    scalar_t* pg = grad_b.data_ptr<scalar_t>();
    scalar_t* pga = grad_a.data_ptr<scalar_t>();
    scalar_t* pg0 = p0 ? grad_h0.data_ptr<scalar_t>() : nullptr;
    for_channel_blocks(B, C, [&](int64_t i, int64_t c0, int64_t c1) {
      const int64_t start = i * T * C, last = start + (T - 1) * C;
      for (int64_t c = c0; c < c1; ++c) pg[last + c] = pgh[last + c];
      for (int64_t t = T - 1; t >= 1; --t) {
        const int64_t now = start + t * C, before = now - C;
        for (int64_t c = c0; c < c1; ++c) {
          pga[now + c] = pg[now + c] * ph[before + c];
          pg[before + c] = pgh[before + c] + pa[now + c] * pg[now + c];
        }
      }
      for (int64_t c = c0; c < c1; ++c) {
        pga[start + c] = p0 ? pg[start + c] * p0[i * C + c] : scalar_t(0);
        if (p0) pg0[i * C + c] = pa[start + c] * pg[start + c];
      }
    });
  });
  return {grad_a, grad_b, grad_h0};
}

// The coefficients, one (batch, time) row of C channels at a time, a vector of channels per step. A
// row of gates holds the block's projections one after another.

// minGRU (paper section 3.1.2): (k_z, k_h) -> a = 1 - z, b = z g(k_h), z = sigmoid(k_z).
template <typename T>
void mingru_forward_row(int64_t C, const T* k_z, const T* k_h, T* a, T* b) {
  for_vectors<T>(C, [&](int64_t c, int64_t n) {
    Vec<T> z, one_minus_z;
    sigmoid_pair(load(k_z + c, n), z, one_minus_z);
    const Vec<T> kh = load(k_h + c, n);
    one_minus_z.store(a + c, n);
    (z * g(kh, sigmoid(kh))).store(b + c, n);
  });
}

// dL/dk_z = (dL/db g(k_h) - dL/da) z (1 - z),  dL/dk_h = dL/db z g'(k_h).
template <typename T>
void mingru_backward_row(int64_t C, const T* k_z, const T* k_h, const T* grad_a, const T* grad_b,
                         T* grad_kz, T* grad_kh) {
  for_vectors<T>(C, [&](int64_t c, int64_t n) {
    Vec<T> z, one_minus_z;
    sigmoid_pair(load(k_z + c, n), z, one_minus_z);
    const Vec<T> kh = load(k_h + c, n), s = sigmoid(kh), gb = load(grad_b + c, n);
    ((gb * g(kh, s) - load(grad_a + c, n)) * z * one_minus_z).store(grad_kz + c, n);
    (gb * z * g_derivative(kh, s)).store(grad_kh + c, n);
  });
}

// minLSTM (paper section 3.2.2): (k_f, k_i, k_h) -> a = f', b = i' g(k_h), with f = sigmoid(k_f),
// i = sigmoid(k_i), f' = f / (f + i), i' = i / (f + i).
template <typename T>
void minlstm_forward_row(int64_t C, const T* k_f, const T* k_i, const T* k_h, T* a, T* b) {
  for_vectors<T>(C, [&](int64_t c, int64_t n) {
    const Vec<T> f = sigmoid(load(k_f + c, n)), i = sigmoid(load(k_i + c, n)), kh = load(k_h + c, n);
    (f / (f + i)).store(a + c, n);
    (i / (f + i) * g(kh, sigmoid(kh))).store(b + c, n);
  });
}

// With q = (dL/da - dL/db g(k_h)) f' i':  dL/dk_f = q (1 - f),  dL/dk_i = -q (1 - i),
// dL/dk_h = dL/db i' g'(k_h).
template <typename T>
void minlstm_backward_row(int64_t C, const T* k_f, const T* k_i, const T* k_h, const T* grad_a,
                          const T* grad_b, T* grad_kf, T* grad_ki, T* grad_kh) {
  for_vectors<T>(C, [&](int64_t c, int64_t n) {
    Vec<T> f, one_minus_f, i, one_minus_i;
    sigmoid_pair(load(k_f + c, n), f, one_minus_f);
    sigmoid_pair(load(k_i + c, n), i, one_minus_i);
    const Vec<T> kh = load(k_h + c, n), s = sigmoid(kh), gb = load(grad_b + c, n);
    const Vec<T> f_norm = f / (f + i), i_norm = i / (f + i);
    const Vec<T> q = (load(grad_a + c, n) - gb * g(kh, s)) * f_norm * i_norm;
    (q * one_minus_f).store(grad_kf + c, n);
    (q.neg() * one_minus_i).store(grad_ki + c, n);
    (gb * i_norm * g_derivative(kh, s)).store(grad_kh + c, n);
  });
}

// gates (B, T, k C) -> (a, b), each (B, T, C); k = 2 for minGRU, 3 for minLSTM.
std::vector<torch::Tensor> mingru_forward(torch::Tensor gates) {
  const int64_t C = gates.size(2) / 2;
  auto a = torch::empty({gates.size(0), gates.size(1), C}, gates.options()), b = torch::empty_like(a);
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "mingru_forward", [&] {
    const scalar_t* k = gates.data_ptr<scalar_t>();
    for_rows(a.numel() / C, [&](int64_t r) {
      mingru_forward_row(C, k + 2 * r * C, k + (2 * r + 1) * C, a.data_ptr<scalar_t>() + r * C,
                         b.data_ptr<scalar_t>() + r * C);
    });
  });
  return {a, b};
}

torch::Tensor mingru_backward(torch::Tensor gates, torch::Tensor grad_a, torch::Tensor grad_b) {
  auto grad_gates = torch::empty_like(gates);
  const int64_t C = gates.size(2) / 2;
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "mingru_backward", [&] {
    const scalar_t* k = gates.data_ptr<scalar_t>();
    scalar_t* grad_k = grad_gates.data_ptr<scalar_t>();
    for_rows(grad_a.numel() / C, [&](int64_t r) {
      mingru_backward_row(C, k + 2 * r * C, k + (2 * r + 1) * C, grad_a.data_ptr<scalar_t>() + r * C,
                          grad_b.data_ptr<scalar_t>() + r * C, grad_k + 2 * r * C, grad_k + (2 * r + 1) * C);
    });
  });
  return grad_gates;
}

std::vector<torch::Tensor> minlstm_forward(torch::Tensor gates) {
  const int64_t C = gates.size(2) / 3;
  auto a = torch::empty({gates.size(0), gates.size(1), C}, gates.options()), b = torch::empty_like(a);
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "minlstm_forward", [&] {
    const scalar_t* k = gates.data_ptr<scalar_t>();
    for_rows(a.numel() / C, [&](int64_t r) {
      minlstm_forward_row(C, k + 3 * r * C, k + (3 * r + 1) * C, k + (3 * r + 2) * C,
                          a.data_ptr<scalar_t>() + r * C, b.data_ptr<scalar_t>() + r * C);
    });
  });
  return {a, b};
}

torch::Tensor minlstm_backward(torch::Tensor gates, torch::Tensor grad_a, torch::Tensor grad_b) {
  auto grad_gates = torch::empty_like(gates);
  const int64_t C = gates.size(2) / 3;
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "minlstm_backward", [&] {
    const scalar_t* k = gates.data_ptr<scalar_t>();
    scalar_t* grad_k = grad_gates.data_ptr<scalar_t>();
    for_rows(grad_a.numel() / C, [&](int64_t r) {
      minlstm_backward_row(C, k + 3 * r * C, k + (3 * r + 1) * C, k + (3 * r + 2) * C,
                           grad_a.data_ptr<scalar_t>() + r * C, grad_b.data_ptr<scalar_t>() + r * C,
                           grad_k + 3 * r * C, grad_k + (3 * r + 1) * C, grad_k + (3 * r + 2) * C);
    });
  });
  return grad_gates;
}

// Mamba's selective scan, fused: per batch element and channel e, with N states,
//   delta_t[e] = softplus(pre_t[e] + bias[e])    where a bias is given (else delta is given as it is)
//   h_t[e, n]  = exp(delta_t[e] A[e, n]) h_{t-1}[e, n] + delta_t[e] B_t[n] x_t[e],   h_0 = h0 or zero
//   y_t[e]     = sum_n C_t[n] h_t[e, n] + D[e] x_t[e],   times SiLU(z_t[e]) where z is given
// (model.Mamba: selective_inputs, scan_channels, SiLUGate), without the (B, T, E, N) coefficients or
// states in memory. Threads split the batch, so that the gradients of B_t and C_t, sums over channels,
// need no locks.
// Channels lie on the vector lanes and the states of one vector of channels are walked kGroup at a time
// through a chunk of kChunk steps, held in registers all the while; only the state before each chunk
// goes to memory (kept for the backward, which recomputes each chunk's states from it). A chunk's rows
// (delta, x, y, ...) are first gathered into small buffers of E' values each, E' = E rounded up to whole
// vectors and one more, zero-padded (there a = exp(0) = 1 and b = 0, so a state stays 0); the extra
// vector keeps rows of a power-of-two E from lying 4 KiB apart, where a load of one would wait on the
// store of another that merely shares its address's low 12 bits (4K aliasing). States are likewise
// padded to whole groups, with A, B_t and C_t zero there. x, delta, z (B, T, E) and Bm, Cm (B, T, N)
// are read as Rows (below); A (E, N), D, bias (E) and h0 (B, E, N) are contiguous.
constexpr int64_t kChunk = 16;  // a state saved per 16 steps: a chunk's rows and states stay in L1/L2
#if defined(CPU_CAPABILITY_AVX512)
constexpr int kGroup = 8;  // states in registers at once: 32 vector registers
#else
constexpr int kGroup = 4;  // 16 vector registers (AVX2)
#endif

int64_t padded(int64_t E, int64_t lanes) { return (E + lanes - 1) / lanes * lanes + lanes; }

// (E, N) -> (N', E'), zero-padded (N' >= N rows); from zero where source is null.
template <typename T>
void to_lanes(const T* source, int64_t E, int64_t N, int64_t N_padded, int64_t E_padded, T* lanes) {
  std::fill(lanes, lanes + N_padded * E_padded, T(0));
  if (source)
    for (int64_t e = 0; e < E; ++e)
      for (int64_t n = 0; n < N; ++n) lanes[n * E_padded + e] = source[e * N + n];
}

// (N', E') -> (E, N)
template <typename T>
void from_lanes(const T* lanes, int64_t E, int64_t N, int64_t E_padded, T* target) {
  for (int64_t e = 0; e < E; ++e)
    for (int64_t n = 0; n < N; ++n) target[e * N + n] = lanes[n * E_padded + e];
}

// The elementwise parts around the scan, a row of E channels (one time step) at a time.

// delta = softplus(v) = log1p(exp(v)), v = pre + bias, and v itself above 20 (F.softplus's threshold).
template <typename T>
void softplus_row(const T* pre, const T* bias, int64_t E, T* delta) {
  for_vectors<T>(E, [&](int64_t e, int64_t count) {
    const Vec<T> v = load(pre + e, count) + load(bias + e, count);
    Vec<T>::blendv(v.exp_u20().log1p(), v, v > Vec<T>(20)).store(delta + e, count);  // exp as sigmoid's
  });
}

// softplus'(v) = sigmoid(v) = e / (1 + e), e = exp(v), and 1 above the threshold (as F.softplus's
// backward; e / (1 + e) would be inf / inf there).
template <typename T>
void softplus_slope_row(const T* pre, const T* bias, int64_t E, T* slope) {
  for_vectors<T>(E, [&](int64_t e, int64_t count) {
    const Vec<T> v = load(pre + e, count) + load(bias + e, count), ev = v.exp_u20();
    Vec<T>::blendv(ev / (Vec<T>(1) + ev), Vec<T>(1), v > Vec<T>(20)).store(slope + e, count);
  });
}

// a = exp(delta A): ATen's inlined exp_u20 (float32: within 20 ulp, the exp its softmax uses; float64:
// the exact exp), not a call that spills every live vector register around it.
template <typename T>
inline Vec<T> decay(Vec<T> d, Vec<T> A) { return (d * A).exp_u20(); }

// A chunk's rows, gathered from the inputs (E' values each, steps E' apart): delta_t, x_t, and the
// output's accumulator; B_t, C_t padded to the groups (N' values each).
template <typename T>
struct ChunkRows {
  std::vector<T> delta, x, y, B, C;
  ChunkRows(int64_t Ep, int64_t Np)
      : delta(kChunk * Ep), x(kChunk * Ep), y(kChunk * Ep), B(kChunk * Np), C(kChunk * Np) {}
};

// A (B, T, C) input read one (batch, time) row at a time: each row contiguous and the rows evenly
// spaced, as in a contiguous tensor or a slice of its last dimension (chunk's and split's views, which
// cpu_kernels.py passes as they are rather than copying them). Outputs are contiguous.
template <typename T>
struct Rows {
  const T* data;
  int64_t stride;
  const T* operator[](int64_t row) const { return data + row * stride; }
};

// Row i * T + t of a (B, T, C) tensor; with T = 1 the rows are the batch's (a size-1 dimension's stride
// is arbitrary: .contiguous() leaves it as it is).
template <typename T>
Rows<T> rows_of(const c10::optional<torch::Tensor>& t) {
  if (!t.has_value()) return Rows<T>{nullptr, 0};
  return Rows<T>{t->data_ptr<T>(), t->size(1) > 1 ? t->stride(1) : t->stride(0)};
}

// The selective scan's inputs, one struct for forward and backward; optional ones are null.
template <typename T>
struct Selective {
  Rows<T> x, delta, Bm, Cm, z;
  const T *D, *bias;
  int64_t T_, E, N, Ep, Np, chunks;
  Selective(const torch::Tensor& x_, const torch::Tensor& delta_, const torch::Tensor& Bm_, const torch::Tensor& Cm_,
            const torch::Tensor& D_, const c10::optional<torch::Tensor>& bias_, const c10::optional<torch::Tensor>& z_)
      : x(rows_of<T>(x_)), delta(rows_of<T>(delta_)), Bm(rows_of<T>(Bm_)), Cm(rows_of<T>(Cm_)), z(rows_of<T>(z_)),
        D(D_.data_ptr<T>()), bias(bias_.has_value() ? bias_->data_ptr<T>() : nullptr), T_(x_.size(1)), E(x_.size(2)),
        N(Bm_.size(2)), Ep(padded(E, Vec<T>::size())), Np((N + kGroup - 1) / kGroup * kGroup),
        chunks((T_ + kChunk - 1) / kChunk) {}

  // Gathers rows t0 .. t0 + steps - 1 of batch element i: delta, x, and y = D x; B and C padded. With a
  // bias, delta = softplus(pre + bias): the forward computes it (and writes it to softplus_out, which
  // it keeps for the backward); the backward reads it from there (softplus_in) and computes its slope.
  void gather(int64_t i, int64_t t0, int64_t steps, ChunkRows<T>& rows, T* softplus_out, const T* softplus_in,
              T* slope) const {
    std::fill(rows.B.begin(), rows.B.end(), T(0));
    std::fill(rows.C.begin(), rows.C.end(), T(0));
    for (int64_t s = 0; s < steps; ++s) {
      const int64_t row = i * T_ + t0 + s;
      T *d = rows.delta.data() + s * Ep, *u = rows.x.data() + s * Ep, *y = rows.y.data() + s * Ep;
      if (softplus_in) {
        std::copy(softplus_in + row * E, softplus_in + (row + 1) * E, d);
        softplus_slope_row(delta[row], bias, E, slope + s * Ep);
      } else if (bias) {
        softplus_row(delta[row], bias, E, d);
        std::copy(d, d + E, softplus_out + row * E);
      } else {
        std::copy(delta[row], delta[row] + E, d);
      }
      std::copy(x[row], x[row] + E, u);
      for_vectors<T>(E, [&](int64_t e, int64_t count) { (load(D + e, count) * load(u + e, count)).store(y + e, count); });
      std::copy(Bm[row], Bm[row] + N, rows.B.data() + s * Np);
      std::copy(Cm[row], Cm[row] + N, rows.C.data() + s * Np);
    }
  }
};

// One vector of channels and kGroup states through `steps` steps, forward: h (the group's states, rows
// E' apart) from before the chunk to after it; y_t += sum_n C_t[n] h_t[n]. A, h offset to the channels
// and the group's first state; rows' buffers offset to the channels, B and C to the group.
template <typename T>
inline void group_forward(const T* A, T* h, int64_t steps, const T* delta, const T* x, T* y, const T* B,
                          const T* C, int64_t Ep, int64_t Np) {
  using V = Vec<T>;
  V A_n[kGroup], h_n[kGroup];
  for (int j = 0; j < kGroup; ++j) A_n[j] = V::loadu(A + j * Ep), h_n[j] = V::loadu(h + j * Ep);
  for (int64_t s = 0; s < steps; ++s) {
    const V d = V::loadu(delta + s * Ep), du = d * V::loadu(x + s * Ep);
    V out = V::loadu(y + s * Ep);
#pragma GCC unroll 16
    for (int j = 0; j < kGroup; ++j) {
      h_n[j] = at::vec::fmadd(decay(d, A_n[j]), h_n[j], du * V(B[s * Np + j]));
      out = at::vec::fmadd(V(C[s * Np + j]), h_n[j], out);
    }
    out.store(y + s * Ep);
  }
  for (int j = 0; j < kGroup; ++j) h_n[j].store(h + j * Ep);
}

// y SiLU(z) of a chunk's rows into the output rows.
template <typename T>
void gate_rows(const T* y, const Rows<T>& z, int64_t row0, int64_t steps, int64_t E, int64_t Ep, T* out) {
  for (int64_t s = 0; s < steps; ++s)
    for_vectors<T>(E, [&](int64_t e, int64_t count) {
      Vec<T> v = Vec<T>::loadu(y + s * Ep + e);
      if (z.data) {
        const Vec<T> zz = load(z[row0 + s] + e, count);
        v = v * zz * sigmoid(zz);
      }
      v.store(out + (row0 + s) * E + e, count);
    });
}

std::vector<torch::Tensor> selective_scan_forward(torch::Tensor x, torch::Tensor delta, torch::Tensor A,
                                                  torch::Tensor Bm, torch::Tensor Cm, torch::Tensor D,
                                                  c10::optional<torch::Tensor> h0, c10::optional<torch::Tensor> bias,
                                                  c10::optional<torch::Tensor> z) {
  const int64_t batch = x.size(0), T = x.size(1), E = x.size(2), N = A.size(1);
  auto y = torch::empty({batch, T, E}, x.options());
  auto last = torch::empty({batch, E, N}, x.options());
  auto softplus = torch::empty(bias.has_value() ? std::vector<int64_t>{batch, T, E} : std::vector<int64_t>{0},
                               x.options());  // delta after the softplus, kept for the backward
  torch::Tensor saved;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "selective_scan_forward", [&] {
    using V = Vec<scalar_t>;
    const Selective<scalar_t> s(x, delta, Bm, Cm, D, bias, z);
    const int64_t Ep = s.Ep, Np = s.Np, chunks = s.chunks;
    saved = torch::empty({batch, chunks, N, Ep}, x.options());
    const scalar_t* p0 = h0.has_value() ? h0->data_ptr<scalar_t>() : nullptr;
    scalar_t *py = y.data_ptr<scalar_t>(), *plast = last.data_ptr<scalar_t>(), *psaved = saved.data_ptr<scalar_t>();
    scalar_t* psoftplus = s.bias ? softplus.data_ptr<scalar_t>() : nullptr;
    std::vector<scalar_t> A_lanes(Np * Ep);
    to_lanes(A.data_ptr<scalar_t>(), E, N, Np, Ep, A_lanes.data());
    at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
      ChunkRows<scalar_t> rows(Ep, Np);
      std::vector<scalar_t> state(Np * Ep);
      for (int64_t i = begin; i < end; ++i) {
        to_lanes(p0 ? p0 + i * E * N : nullptr, E, N, Np, Ep, state.data());
        for (int64_t c = 0; c < chunks; ++c) {
          const int64_t t0 = c * kChunk, steps = std::min(kChunk, T - t0);
          std::memcpy(psaved + (i * chunks + c) * N * Ep, state.data(), N * Ep * sizeof(scalar_t));
          s.gather(i, t0, steps, rows, psoftplus, nullptr, nullptr);
          for (int64_t e = 0; e < E; e += V::size())
            for (int64_t n = 0; n < Np; n += kGroup)
              group_forward(A_lanes.data() + n * Ep + e, state.data() + n * Ep + e, steps, rows.delta.data() + e,
                            rows.x.data() + e, rows.y.data() + e, rows.B.data() + n, rows.C.data() + n, Ep, Np);
          gate_rows(rows.y.data(), s.z, i * T + t0, steps, E, Ep, py);
        }
        from_lanes(state.data(), E, N, Ep, plast + i * E * N);
      }
    });
  });
  return {y, last, saved, softplus};
}

// The backward's buffers for one chunk (E' values a step, or N' vectors a step for the per-lane sums).
template <typename T>
struct ChunkGrads {
  std::vector<T> grad_y, sum_gB, sum_gdA;  // dL/dy_t; sum_n g_t B_t and sum_n g_t A a_t h_{t-1} (E' each)
  std::vector<T> slope, sum_B, sum_C;      // softplus' (E'); dL/dB_t, dL/dC_t per lane (N' vectors each)
  std::vector<T> h, a;                     // one group's h_{t0-1 ..} and a_t through the chunk
  ChunkGrads(int64_t Ep, int64_t Np, int64_t lanes)
      : grad_y(kChunk * Ep), sum_gB(kChunk * Ep), sum_gdA(kChunk * Ep), slope(kChunk * Ep),
        sum_B(kChunk * Np * lanes), sum_C(kChunk * Np * lanes), h((kChunk + 1) * kGroup * lanes),
        a(kChunk * kGroup * lanes) {}
};

// One vector of channels and kGroup states back through `steps` steps. start: the states before the
// chunk; g: a_{t+1} g_{t+1} after it, in place of it before; gA: dL/dA, accumulated (rows E' apart).
// y (the pre-gate output, where accumulate_y) and the rows' buffers offset to the channels; B, C and
// the per-lane sums to the group.
template <typename T>
inline void group_backward(const T* A, const T* start, T* g, T* gA, int64_t steps, const T* delta, const T* x,
                           T* y, bool accumulate_y, const T* B, const T* C, ChunkGrads<T>& w, int64_t e, int64_t n,
                           int64_t Ep, int64_t Np) {
  using V = Vec<T>;
  constexpr int64_t lanes = V::size();
  const T *grad_y = w.grad_y.data() + e;
  T *h = w.h.data(), *a = w.a.data(), *sum_B = w.sum_B.data() + n * lanes, *sum_C = w.sum_C.data() + n * lanes;
  V A_n[kGroup], h_n[kGroup];
  for (int j = 0; j < kGroup; ++j) {
    A_n[j] = V::loadu(A + j * Ep), h_n[j] = V::loadu(start + j * Ep);
    h_n[j].store(h + j * lanes);
  }
  for (int64_t s = 0; s < steps; ++s) {  // h[s] = h_{t0 + s - 1}, a[s] = a_{t0 + s}
    const V d = V::loadu(delta + s * Ep), du = d * V::loadu(x + s * Ep), gy = V::loadu(grad_y + s * Ep);
    V out = accumulate_y ? V::loadu(y + s * Ep) : V(0);
#pragma GCC unroll 16
    for (int j = 0; j < kGroup; ++j) {
      const V a_t = decay(d, A_n[j]);
      h_n[j] = at::vec::fmadd(a_t, h_n[j], du * V(B[s * Np + j]));
      a_t.store(a + (s * kGroup + j) * lanes);
      h_n[j].store(h + ((s + 1) * kGroup + j) * lanes);
      T* sC = sum_C + (s * Np + j) * lanes;
      at::vec::fmadd(h_n[j], gy, V::loadu(sC)).store(sC);
      out = at::vec::fmadd(V(C[s * Np + j]), h_n[j], out);
    }
    if (accumulate_y) out.store(y + s * Ep);
  }
  V g_n[kGroup], gA_n[kGroup];
  for (int j = 0; j < kGroup; ++j) g_n[j] = V::loadu(g + j * Ep), gA_n[j] = V::loadu(gA + j * Ep);
  for (int64_t s = steps - 1; s >= 0; --s) {
    const V d = V::loadu(delta + s * Ep), du = d * V::loadu(x + s * Ep), gy = V::loadu(grad_y + s * Ep);
    V gB(0), gdA(0);
#pragma GCC unroll 16
    for (int j = 0; j < kGroup; ++j) {
      const V a_t = V::loadu(a + (s * kGroup + j) * lanes), g_t = at::vec::fmadd(V(C[s * Np + j]), gy, g_n[j]);
      const V g_a_h = g_t * a_t * V::loadu(h + (s * kGroup + j) * lanes);  // dL/d(delta A)
      T* sB = sum_B + (s * Np + j) * lanes;
      at::vec::fmadd(g_t, du, V::loadu(sB)).store(sB);
      gA_n[j] = at::vec::fmadd(g_a_h, d, gA_n[j]);
      gB = at::vec::fmadd(g_t, V(B[s * Np + j]), gB);
      gdA = at::vec::fmadd(g_a_h, V::loadu(A + j * Ep), gdA);
      g_n[j] = a_t * g_t;
    }
    T *sgB = w.sum_gB.data() + s * Ep + e, *sgdA = w.sum_gdA.data() + s * Ep + e;
    (V::loadu(sgB) + gB).store(sgB);
    (V::loadu(sgdA) + gdA).store(sgdA);
  }
  for (int j = 0; j < kGroup; ++j) g_n[j].store(g + j * Ep), gA_n[j].store(gA + j * Ep);
}

// Backward, chunk by chunk from the end, with g_t = dL/dh_t (total) = C_t dL/dy_t + a_{t+1} g_{t+1}, u = x:
//   dL/dx_t = D dL/dy_t + delta_t sum_n g_t B_t,   dL/ddelta_t = sum_n g_t A a_t h_{t-1} + u_t sum_n g_t B_t,
//   dL/dA = sum_t g_t delta_t a_t h_{t-1},   dL/dB_t = sum_e g_t delta_t u_t,   dL/dC_t = sum_e h_t dL/dy_t,
//   dL/dD = sum_t u_t dL/dy_t,   dL/dh0 = a_1 g_1,   and with a bias dL/dpre = dL/ddelta sigmoid(pre + bias),
//   dL/dbias = sum_t dL/dpre;  with z, dL/dy = dL/dout SiLU(z) (known before y) and
//   dL/dz = dL/dout y SiLU'(z), SiLU'(z) = s (1 + z (1 - s)), s = sigmoid(z).
// For each vector of channels and group of states, a first pass recomputes the chunk's h_t and a_t from
// the saved state (into a small buffer) and adds its h_t dL/dy_t (and y_t, for dL/dz); a second runs back
// through the chunk with g and dL/dA in registers. dL/dB_t and dL/dC_t are summed over channels per lane
// first (a vector per step and state), over the lanes once per chunk.
// dA, dD and dbias come back per batch element and are summed over it here.
// softplus: the forward's delta after the softplus (empty without a bias). grad_last: dL/d(the last
// state), where a later chunk of the sequence read it (absent: zero).
std::vector<torch::Tensor> selective_scan_backward(torch::Tensor x, torch::Tensor delta, torch::Tensor A,
                                                   torch::Tensor Bm, torch::Tensor Cm, torch::Tensor D,
                                                   c10::optional<torch::Tensor> bias, c10::optional<torch::Tensor> z,
                                                   torch::Tensor saved, torch::Tensor softplus, torch::Tensor grad_out,
                                                   c10::optional<torch::Tensor> grad_last) {
  const int64_t batch = x.size(0), T = x.size(1), E = x.size(2), N = A.size(1);
  auto gx = torch::empty({batch, T, E}, x.options()), gdelta = torch::empty({batch, T, E}, x.options());
  auto gB = torch::empty({batch, T, N}, x.options()), gC = torch::empty({batch, T, N}, x.options());
  auto gA = torch::empty({batch, E, N}, x.options()), gD = torch::zeros({batch, E}, x.options());
  auto gbias = torch::zeros({batch, E}, x.options());
  auto gz = torch::empty(z.has_value() ? std::vector<int64_t>{batch, T, E} : std::vector<int64_t>{0}, x.options());
  auto gh0 = torch::empty({batch, E, N}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "selective_scan_backward", [&] {
    using V = Vec<scalar_t>;
    const int64_t lanes = V::size();
    const Selective<scalar_t> s(x, delta, Bm, Cm, D, bias, z);
    const int64_t Ep = s.Ep, Np = s.Np, chunks = s.chunks;
    const scalar_t *psaved = saved.data_ptr<scalar_t>(), *pgo = grad_out.data_ptr<scalar_t>();
    const scalar_t* psoftplus = s.bias ? softplus.data_ptr<scalar_t>() : nullptr;
    scalar_t *pgx = gx.data_ptr<scalar_t>(), *pgd = gdelta.data_ptr<scalar_t>(), *pgB = gB.data_ptr<scalar_t>();
    scalar_t *pgC = gC.data_ptr<scalar_t>(), *pgA = gA.data_ptr<scalar_t>(), *pgD = gD.data_ptr<scalar_t>();
    scalar_t *pgbias = gbias.data_ptr<scalar_t>(), *pgz = s.z.data ? gz.data_ptr<scalar_t>() : nullptr;
    scalar_t* pgh0 = gh0.data_ptr<scalar_t>();
    const scalar_t* pgl = grad_last.has_value() ? grad_last->data_ptr<scalar_t>() : nullptr;
    std::vector<scalar_t> A_lanes(Np * Ep);
    to_lanes(A.data_ptr<scalar_t>(), E, N, Np, Ep, A_lanes.data());
    at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
      ChunkRows<scalar_t> rows(Ep, Np);
      ChunkGrads<scalar_t> w(Ep, Np, lanes);
      std::vector<scalar_t> start(Np * Ep), carried(Np * Ep), gA_lanes(Np * Ep);  // h before the chunk; a g; dL/dA
      for (int64_t i = begin; i < end; ++i) {
        to_lanes(pgl ? pgl + i * E * N : nullptr, E, N, Np, Ep, carried.data());  // g after the last step
        std::fill(gA_lanes.begin(), gA_lanes.end(), scalar_t(0));
        scalar_t *gD_i = pgD + i * E, *gbias_i = pgbias + i * E;
        for (int64_t c = chunks - 1; c >= 0; --c) {
          const int64_t t0 = c * kChunk, steps = std::min(kChunk, T - t0), row0 = i * T + t0;
          std::memcpy(start.data(), psaved + (i * chunks + c) * N * Ep, N * Ep * sizeof(scalar_t));
          s.gather(i, t0, steps, rows, nullptr, psoftplus, w.slope.data());
          for (int64_t t = 0; t < steps; ++t)  // dL/dy_t = dL/dout SiLU(z)
            for_vectors<scalar_t>(E, [&](int64_t e, int64_t count) {
              V gy = load(pgo + (row0 + t) * E + e, count);
              if (s.z.data) {
                const V zz = load(s.z[row0 + t] + e, count);
                gy = gy * zz * sigmoid(zz);
              }
              gy.store(w.grad_y.data() + t * Ep + e);
            });
          std::fill(w.sum_gB.begin(), w.sum_gB.end(), scalar_t(0));
          std::fill(w.sum_gdA.begin(), w.sum_gdA.end(), scalar_t(0));
          std::fill(w.sum_B.begin(), w.sum_B.end(), scalar_t(0));
          std::fill(w.sum_C.begin(), w.sum_C.end(), scalar_t(0));
          for (int64_t e = 0; e < E; e += lanes)
            for (int64_t n = 0; n < Np; n += kGroup)
              group_backward(A_lanes.data() + n * Ep + e, start.data() + n * Ep + e, carried.data() + n * Ep + e,
                             gA_lanes.data() + n * Ep + e, steps, rows.delta.data() + e, rows.x.data() + e,
                             rows.y.data() + e, s.z.data != nullptr, rows.B.data() + n, rows.C.data() + n, w, e, n,
                             Ep, Np);
          for (int64_t t = 0; t < steps; ++t) {
            const int64_t row = row0 + t, r = t * Ep;
            for_vectors<scalar_t>(E, [&](int64_t e, int64_t count) {
              const V d = V::loadu(rows.delta.data() + r + e), u = V::loadu(rows.x.data() + r + e);
              const V gy = V::loadu(w.grad_y.data() + r + e), gB_sum = V::loadu(w.sum_gB.data() + r + e);
              at::vec::fmadd(gB_sum, d, load(s.D + e, count) * gy).store(pgx + row * E + e, count);
              V gd = at::vec::fmadd(gB_sum, u, V::loadu(w.sum_gdA.data() + r + e));
              if (s.bias) {
                gd = gd * V::loadu(w.slope.data() + r + e);
                (load(gbias_i + e, count) + gd).store(gbias_i + e, count);
              }
              gd.store(pgd + row * E + e, count);
              at::vec::fmadd(u, gy, load(gD_i + e, count)).store(gD_i + e, count);
              if (s.z.data) {  // dL/dz = dL/dout y SiLU'(z)
                const V zz = load(s.z[row] + e, count), sz = sigmoid(zz);
                const V go = load(pgo + row * E + e, count), yy = V::loadu(rows.y.data() + r + e);
                (go * yy * sz * (V(1) + zz * (V(1) - sz))).store(pgz + row * E + e, count);
              }
            });
            for (int64_t n = 0; n < N; ++n) {  // padded lanes hold zeros
              const scalar_t *sB = w.sum_B.data() + (t * Np + n) * lanes, *sC = w.sum_C.data() + (t * Np + n) * lanes;
              pgB[row * N + n] = std::accumulate(sB, sB + lanes, scalar_t(0));
              pgC[row * N + n] = std::accumulate(sC, sC + lanes, scalar_t(0));
            }
          }
        }
        from_lanes(carried.data(), E, N, Ep, pgh0 + i * E * N);
        from_lanes(gA_lanes.data(), E, N, Ep, pgA + i * E * N);
      }
    });
  });
  return {gx, gdelta, gA.sum(0), gB, gC, gD.sum(0), gh0, gbias.sum(0), gz};
}

// The causal depthwise conv (model.CausalDepthwiseConv, ShiftedSum): per channel c,
//   y_t[c] = bias[c] + sum_{s=0..K-1} weight[K-1-s, c] x_{t-s}[c]   (x before the first step is zero)
// and SiLU(y_t) where silu. x (B, T, C) in Rows, weight (K, C), bias (C) contiguous; K <= kConvTaps.
// Each vector of channels walks time with the weights, the window of inputs (forward) or of gradients
// (backward) and the weight's gradient in registers: the weights are padded in front to kConvTaps taps
// with zeros, so one loop serves every K.
constexpr int kConvTaps = 4;  // cpu_kernels.CONV_MAX_KERNEL

template <typename T>
struct ConvTaps {
  Vec<T> w[kConvTaps];  // w[kConvTaps - 1 - s] multiplies x_{t-s}
  ConvTaps(const T* weight, int64_t K, int64_t C, int64_t c, int64_t count) {
    for (int s = 0; s < kConvTaps; ++s) w[kConvTaps - 1 - s] = s < K ? load(weight + (K - 1 - s) * C + c, count) : Vec<T>(0);
  }
  // bias + sum_s w[kConvTaps - 1 - s] x_{t-s}, from inputs[s] = x_{t-s}
  Vec<T> conv(const Vec<T>& bias, const Vec<T>* inputs) const {
    Vec<T> y = bias;
    for (int s = 0; s < kConvTaps; ++s) y = at::vec::fmadd(w[kConvTaps - 1 - s], inputs[s], y);
    return y;
  }
};

// x_{t-s}[c ..] of batch element i, zero before the first step.
template <typename T>
inline Vec<T> input_at(const Rows<T>& xs, int64_t i, int64_t T_, int64_t t, int64_t c, int64_t count) {
  return t >= 0 ? load(xs[i * T_ + t] + c, count) : Vec<T>(0);
}

torch::Tensor causal_conv_forward(torch::Tensor x, torch::Tensor weight, torch::Tensor bias, bool silu) {
  const int64_t batch = x.size(0), T = x.size(1), C = x.size(2), K = weight.size(0);
  TORCH_CHECK(K <= kConvTaps, "causal_conv takes kernels of up to ", kConvTaps, " steps, got ", K);
  auto y = torch::empty({batch, T, C}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "causal_conv_forward", [&] {
    using V = Vec<scalar_t>;
    const Rows<scalar_t> xs = rows_of<scalar_t>(x);
    const scalar_t *pw = weight.data_ptr<scalar_t>(), *pb = bias.data_ptr<scalar_t>();
    scalar_t* py = y.data_ptr<scalar_t>();
    at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i)
        for_vectors<scalar_t>(C, [&](int64_t c, int64_t count) {
          const ConvTaps<scalar_t> taps(pw, K, C, c, count);
          const V b = load(pb + c, count);
          V window[kConvTaps];  // x_t, x_{t-1}, ...
          for (int s = 0; s < kConvTaps; ++s) window[s] = V(0);
          for (int64_t t = 0; t < T; ++t) {
            for (int s = kConvTaps - 1; s > 0; --s) window[s] = window[s - 1];
            window[0] = load(xs[i * T + t] + c, count);
            V out = taps.conv(b, window);
            if (silu) out = out * sigmoid(out);
            out.store(py + (i * T + t) * C + c, count);
          }
        });
    });
  });
  return y;
}

// With g_t = dL/dy_t (times SiLU'(y_t) = s (1 + y_t (1 - s)), s = sigmoid(y_t), where silu, y_t
// recomputed):  dL/dx_t = sum_s weight[K-1-s] g_{t+s},  dL/dweight[K-1-s] = sum_{b,t} g_t x_{t-s},
// dL/dbias = sum_{b,t} g_t. Time is walked backwards, so that g_{t+1 ..} are at hand. Threads split the
// batch; the weight's and bias's sums come back per batch element and are summed here. Returns (dL/dx,
// dL/dweight, dL/dbias).
std::vector<torch::Tensor> causal_conv_backward(torch::Tensor x, torch::Tensor weight, torch::Tensor bias, bool silu,
                                                torch::Tensor grad_y) {
  const int64_t batch = x.size(0), T = x.size(1), C = x.size(2), K = weight.size(0);
  TORCH_CHECK(K <= kConvTaps, "causal_conv takes kernels of up to ", kConvTaps, " steps, got ", K);
  auto gx = torch::empty({batch, T, C}, x.options());
  auto gw = torch::zeros({batch, K, C}, x.options()), gb = torch::zeros({batch, C}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "causal_conv_backward", [&] {
    using V = Vec<scalar_t>;
    const Rows<scalar_t> xs = rows_of<scalar_t>(x);
    const scalar_t *pw = weight.data_ptr<scalar_t>(), *pb = bias.data_ptr<scalar_t>();
    const scalar_t* pgy = grad_y.data_ptr<scalar_t>();
    scalar_t *pgx = gx.data_ptr<scalar_t>(), *pgw = gw.data_ptr<scalar_t>(), *pgb = gb.data_ptr<scalar_t>();
    at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i)
        for_vectors<scalar_t>(C, [&](int64_t c, int64_t count) {
          const ConvTaps<scalar_t> taps(pw, K, C, c, count);
          const V b = load(pb + c, count);
          V later[kConvTaps], grad_w[kConvTaps], grad_b(0);  // later[s] = g_{t+s}; grad_w as taps.w
          for (int s = 0; s < kConvTaps; ++s) later[s] = grad_w[s] = V(0);
          for (int64_t t = T - 1; t >= 0; --t) {
            V inputs[kConvTaps];  // x_{t-s}
            for (int s = 0; s < kConvTaps; ++s) inputs[s] = input_at(xs, i, T, t - s, c, count);
            V g = load(pgy + (i * T + t) * C + c, count);
            if (silu) {
              const V y = taps.conv(b, inputs), sy = sigmoid(y);
              g = g * sy * (V(1) + y * (V(1) - sy));
            }
            for (int s = kConvTaps - 1; s > 0; --s) later[s] = later[s - 1];
            later[0] = g;
            V dx(0);
            for (int s = 0; s < kConvTaps; ++s) {
              dx = at::vec::fmadd(taps.w[kConvTaps - 1 - s], later[s], dx);
              grad_w[kConvTaps - 1 - s] = at::vec::fmadd(g, inputs[s], grad_w[kConvTaps - 1 - s]);
            }
            grad_b = grad_b + g;
            dx.store(pgx + (i * T + t) * C + c, count);
          }
          for (int64_t s = 0; s < K; ++s) grad_w[kConvTaps - 1 - s].store(pgw + (i * K + K - 1 - s) * C + c, count);
          grad_b.store(pgb + i * C + c, count);
        });
    });
  });
  return {gx, gw.sum(0), gb.sum(0)};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("scan_forward", &scan_forward);
  m.def("scan_backward", &scan_backward);
  m.def("mingru_forward", &mingru_forward);
  m.def("mingru_backward", &mingru_backward);
  m.def("minlstm_forward", &minlstm_forward);
  m.def("minlstm_backward", &minlstm_backward);
  m.def("selective_scan_forward", &selective_scan_forward);
  m.def("selective_scan_backward", &selective_scan_backward);
  m.def("causal_conv_forward", &causal_conv_forward);
  m.def("causal_conv_backward", &causal_conv_backward);
}
