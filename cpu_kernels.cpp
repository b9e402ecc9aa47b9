// Compiled CPU loops for the recurrent layers, loaded by cpu_kernels.py (the 'compiled' scan backend).
// Each one computes exactly what a plain-PyTorch function computes (tests hold them equal):
//   scan_forward / scan_backward            scan.SequentialScan
//   mingru_forward / mingru_backward        model.MinGRUCoefficients
//   minlstm_forward / minlstm_backward      model.MinLSTMCoefficients
//   selective_scan_forward / _backward      model.Mamba.scan_channels (fused: no (B, T, E, N) tensor)
// Why: on a CPU those functions are a chain of PyTorch calls, each one a pass over memory (and, for
// the scan, two calls per time step). Here each is one pass, and the coefficient backwards recompute
// the gates from their pre-activations instead of saving them. All tensors are contiguous (B, T, C)
// float32 or float64; cpu_kernels.py makes sure of it.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace {

// The helpers below must be inlined into the channel loops for these to vectorise (a call stops it).
#define ALWAYS_INLINE inline __attribute__((always_inline))

// exp(x) for float in plain arithmetic, so that the compiler vectorises the loops that call it (a call
// to std::exp keeps them scalar, about 10x slower): exp(x) = 2^k exp(r), k = round(x / ln 2),
// r = x - k ln 2 in [-ln2/2, ln2/2], exp(r) by its Taylor series to r^7 (remainder < 6e-9, below
// float's rounding). x is clamped to [-87, 88], where 2^k is a normal float: sigmoid(+-100) still
// rounds to 1 and 0. double, used by the tests, takes std::exp.
ALWAYS_INLINE float exp_approx(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float round_magic = 12582912.0f;  // 1.5 * 2^23: adding and subtracting it rounds to an integer
  const float k = (x * 1.44269504f + round_magic) - round_magic;
  const float r = (x - k * 0.693359375f) + k * 2.12194440e-4f;  // ln 2 in two parts, the first exact in k
  float p = 1.0f / 5040;
  p = p * r + 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;  // the float 2^k
  float two_to_k;
  std::memcpy(&two_to_k, &bits, sizeof bits);
  return p * two_to_k;
}
ALWAYS_INLINE double exp_approx(double x) { return std::exp(x); }

template <typename T>
ALWAYS_INLINE T sigmoid(T x) { return T(1) / (T(1) + exp_approx(-x)); }

// sigmoid(x) and sigmoid(-x) = 1 - sigmoid(x) from one exp, the second without cancellation near 1.
template <typename T>
ALWAYS_INLINE void sigmoid_pair(T x, T& positive, T& negative) {
  const T e = exp_approx(-x);
  positive = T(1) / (T(1) + e);
  negative = e == INFINITY ? T(1) : e * positive;  // e / (1 + e); e is finite for float
}

// The paper's g(x) = x + 1/2 for x >= 0, sigmoid(x) otherwise, as max(x + 1/2, sigmoid x); s = sigmoid(x).
template <typename T>
ALWAYS_INLINE T g(T x, T s) { return std::max(x + T(0.5), s); }

// g'(x): 1 for x > 0, sigmoid'(x) = s (1 - s) otherwise.
template <typename T>
ALWAYS_INLINE T g_derivative(T x, T s) { return x > 0 ? T(1) : s * (T(1) - s); }

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

// The coefficients, one (batch, time) row of C channels at a time. A row of gates holds the block's
// projections one after another; the pointers are __restrict__ parameters, so that the channel loops
// vectorise (the compiler need not check whether outputs overlap inputs).

// minGRU (paper section 3.1.2): (k_z, k_h) -> a = 1 - z, b = z g(k_h), z = sigmoid(k_z).
template <typename T>
void mingru_forward_row(int64_t C, const T* __restrict__ k_z, const T* __restrict__ k_h,
                        T* __restrict__ a, T* __restrict__ b) {
  for (int64_t c = 0; c < C; ++c) {
    T z, one_minus_z;
    sigmoid_pair(k_z[c], z, one_minus_z);
    a[c] = one_minus_z;
    b[c] = z * g(k_h[c], sigmoid(k_h[c]));
  }
}

// dL/dk_z = (dL/db g(k_h) - dL/da) z (1 - z),  dL/dk_h = dL/db z g'(k_h).
template <typename T>
void mingru_backward_row(int64_t C, const T* __restrict__ k_z, const T* __restrict__ k_h,
                         const T* __restrict__ grad_a, const T* __restrict__ grad_b,
                         T* __restrict__ grad_kz, T* __restrict__ grad_kh) {
  for (int64_t c = 0; c < C; ++c) {
    T z, one_minus_z;
    sigmoid_pair(k_z[c], z, one_minus_z);
    const T s = sigmoid(k_h[c]);
    grad_kz[c] = (grad_b[c] * g(k_h[c], s) - grad_a[c]) * z * one_minus_z;
    grad_kh[c] = grad_b[c] * z * g_derivative(k_h[c], s);
  }
}

// minLSTM (paper section 3.2.2): (k_f, k_i, k_h) -> a = f', b = i' g(k_h), with f = sigmoid(k_f),
// i = sigmoid(k_i), f' = f / (f + i), i' = i / (f + i).
template <typename T>
void minlstm_forward_row(int64_t C, const T* __restrict__ k_f, const T* __restrict__ k_i,
                         const T* __restrict__ k_h, T* __restrict__ a, T* __restrict__ b) {
  for (int64_t c = 0; c < C; ++c) {
    const T f = sigmoid(k_f[c]), i = sigmoid(k_i[c]);
    a[c] = f / (f + i);
    b[c] = i / (f + i) * g(k_h[c], sigmoid(k_h[c]));
  }
}

// With q = (dL/da - dL/db g(k_h)) f' i':  dL/dk_f = q (1 - f),  dL/dk_i = -q (1 - i),
// dL/dk_h = dL/db i' g'(k_h).
template <typename T>
void minlstm_backward_row(int64_t C, const T* __restrict__ k_f, const T* __restrict__ k_i,
                          const T* __restrict__ k_h, const T* __restrict__ grad_a, const T* __restrict__ grad_b,
                          T* __restrict__ grad_kf, T* __restrict__ grad_ki, T* __restrict__ grad_kh) {
  for (int64_t c = 0; c < C; ++c) {
    T f, one_minus_f, i, one_minus_i;
    sigmoid_pair(k_f[c], f, one_minus_f);
    sigmoid_pair(k_i[c], i, one_minus_i);
    const T f_norm = f / (f + i), i_norm = i / (f + i), s = sigmoid(k_h[c]);
    const T q = (grad_a[c] - grad_b[c] * g(k_h[c], s)) * f_norm * i_norm;
    grad_kf[c] = q * one_minus_f;
    grad_ki[c] = -q * one_minus_i;
    grad_kh[c] = grad_b[c] * i_norm * g_derivative(k_h[c], s);
  }
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
//   h_t[e, n] = exp(delta_t[e] A[e, n]) h_{t-1}[e, n] + delta_t[e] B_t[n] x_t[e],   h_0 = h0 or zero
//   y_t[e]    = sum_n C_t[n] h_t[e, n] + D[e] x_t[e]
// (model.Mamba.scan_channels), without the (B, T, E, N) coefficients or states in memory: the states
// live in a small buffer per task, and forward keeps only every K-th one (the state before each
// chunk of K steps) for backward, which recomputes each chunk's states from it. Inputs are contiguous:
// x, delta (B, T, E); A (E, N); Bm, Cm (B, T, N); D (E); h0 (B, E, N). Returns y, the last state
// (B, E, N) and the chunk states (B, chunks, E, N). Threads split the batch, so that the gradients of
// B_t and C_t, sums over channels, need no locks.
constexpr int64_t kChunk = 32;  // a state saved per 32 steps: 1/32 of the states in memory

std::vector<torch::Tensor> selective_scan_forward(torch::Tensor x, torch::Tensor delta, torch::Tensor A,
                                                  torch::Tensor Bm, torch::Tensor Cm, torch::Tensor D,
                                                  c10::optional<torch::Tensor> h0) {
  const int64_t batch = x.size(0), T = x.size(1), E = x.size(2), N = A.size(1);
  const int64_t chunks = (T + kChunk - 1) / kChunk;
  auto y = torch::empty_like(x);
  auto last = torch::empty({batch, E, N}, x.options());
  auto saved = torch::empty({batch, chunks, E, N}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "selective_scan_forward", [&] {
    const scalar_t *px = x.data_ptr<scalar_t>(), *pd = delta.data_ptr<scalar_t>(), *pA = A.data_ptr<scalar_t>();
    const scalar_t *pB = Bm.data_ptr<scalar_t>(), *pC = Cm.data_ptr<scalar_t>(), *pD = D.data_ptr<scalar_t>();
    const scalar_t* p0 = h0.has_value() ? h0->data_ptr<scalar_t>() : nullptr;
    scalar_t *py = y.data_ptr<scalar_t>(), *plast = last.data_ptr<scalar_t>(), *psaved = saved.data_ptr<scalar_t>();
    at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        scalar_t* h = plast + i * E * N;  // the running state, (E, N); it ends as the last one
        for (int64_t k = 0; k < E * N; ++k) h[k] = p0 ? p0[i * E * N + k] : scalar_t(0);
        for (int64_t t = 0; t < T; ++t) {
          if (t % kChunk == 0) std::memcpy(psaved + (i * chunks + t / kChunk) * E * N, h, E * N * sizeof(scalar_t));
          const int64_t row = (i * T + t);
          const scalar_t *Bt = pB + row * N, *Ct = pC + row * N;
          for (int64_t e = 0; e < E; ++e) {
            const scalar_t d = pd[row * E + e], u = px[row * E + e], du = d * u;
            scalar_t* he = h + e * N;
            const scalar_t* Ae = pA + e * N;
            for (int64_t n = 0; n < N; ++n) he[n] = exp_approx(d * Ae[n]) * he[n] + du * Bt[n];  // vectorises
            scalar_t out = 0;  // a sum: kept out of the loop above, which it would keep scalar
            for (int64_t n = 0; n < N; ++n) out += Ct[n] * he[n];
            py[row * E + e] = out + pD[e] * u;
          }
        }
      }
    });
  });
  return {y, last, saved};
}

// Backward, chunk by chunk from the end, each chunk's states recomputed from the saved one. With
// g_t = dL/dh_t (total) = C_t dL/dy_t + a_{t+1} g_{t+1}, a_t = exp(delta_t A), u = x:
//   dL/dx_t = D dL/dy_t + sum_n g_t delta_t B_t,   dL/ddelta_t = sum_n g_t (A a_t h_{t-1} + B_t u_t),
//   dL/dA = sum_t g_t delta_t a_t h_{t-1},   dL/dB_t = sum_e g_t delta_t u_t,   dL/dC_t = sum_e h_t dL/dy_t,
//   dL/dD = sum_t u_t dL/dy_t,   dL/dh0 = a_1 g_1.
// dA and dD come back per batch element (B, E, N) and (B, E), summed over the batch by the caller.
std::vector<torch::Tensor> selective_scan_backward(torch::Tensor x, torch::Tensor delta, torch::Tensor A,
                                                   torch::Tensor Bm, torch::Tensor Cm, torch::Tensor D,
                                                   torch::Tensor saved, torch::Tensor grad_y) {
  const int64_t batch = x.size(0), T = x.size(1), E = x.size(2), N = A.size(1), chunks = saved.size(1);
  auto gx = torch::empty_like(x), gdelta = torch::empty_like(delta);
  auto gB = torch::zeros_like(Bm), gC = torch::zeros_like(Cm);
  auto gA = torch::zeros({batch, E, N}, x.options()), gD = torch::zeros({batch, E}, x.options());
  auto gh0 = torch::empty({batch, E, N}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "selective_scan_backward", [&] {
    const scalar_t *px = x.data_ptr<scalar_t>(), *pd = delta.data_ptr<scalar_t>(), *pA = A.data_ptr<scalar_t>();
    const scalar_t *pB = Bm.data_ptr<scalar_t>(), *pC = Cm.data_ptr<scalar_t>(), *pD = D.data_ptr<scalar_t>();
    const scalar_t *psaved = saved.data_ptr<scalar_t>(), *pgy = grad_y.data_ptr<scalar_t>();
    scalar_t *pgx = gx.data_ptr<scalar_t>(), *pgd = gdelta.data_ptr<scalar_t>(), *pgB = gB.data_ptr<scalar_t>();
    scalar_t *pgC = gC.data_ptr<scalar_t>(), *pgA = gA.data_ptr<scalar_t>(), *pgD = gD.data_ptr<scalar_t>();
    scalar_t* pgh0 = gh0.data_ptr<scalar_t>();
    at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> states((kChunk + 1) * E * N);  // h_{t-1} for the chunk's steps, then h_t
      std::vector<scalar_t> a(N), total(N);  // a_t and g_t of one channel
      for (int64_t i = begin; i < end; ++i) {
        scalar_t* g = pgh0 + i * E * N;  // g_{t+1} a_{t+1}, carried backwards; ends as dL/dh0
        std::fill(g, g + E * N, scalar_t(0));
        scalar_t *gA_i = pgA + i * E * N, *gD_i = pgD + i * E;
        for (int64_t c = chunks - 1; c >= 0; --c) {
          const int64_t t0 = c * kChunk, t1 = std::min(T, t0 + kChunk);
          std::memcpy(states.data(), psaved + (i * chunks + c) * E * N, E * N * sizeof(scalar_t));
          for (int64_t t = t0; t < t1; ++t) {  // states[s] = h_{t0 + s - 1}: recompute the chunk
            const int64_t row = i * T + t;
            const scalar_t* prev = states.data() + (t - t0) * E * N;
            scalar_t* now = states.data() + (t - t0 + 1) * E * N;
            for (int64_t e = 0; e < E; ++e) {
              const scalar_t d = pd[row * E + e], du = d * px[row * E + e];
              _Pragma("GCC ivdep")  // no overlap between the rows: let the loop vectorise
              for (int64_t n = 0; n < N; ++n)
                now[e * N + n] = exp_approx(d * pA[e * N + n]) * prev[e * N + n] + du * pB[row * N + n];
            }
          }
          for (int64_t t = t1 - 1; t >= t0; --t) {
            const int64_t row = i * T + t;
            const scalar_t* prev = states.data() + (t - t0) * E * N;
            const scalar_t* now = prev + E * N;
            const scalar_t *Bt = pB + row * N, *Ct = pC + row * N;
            scalar_t *gBt = pgB + row * N, *gCt = pgC + row * N;
            for (int64_t e = 0; e < E; ++e) {
              const scalar_t d = pd[row * E + e], u = px[row * E + e], gy = pgy[row * E + e];
              // __restrict__: these rows never overlap, which lets the compiler vectorise the loop
              const scalar_t* __restrict__ Ae = pA + e * N;
              const scalar_t* __restrict__ he_prev = prev + e * N;
              const scalar_t* __restrict__ he_now = now + e * N;
              scalar_t* __restrict__ ge = g + e * N;
              scalar_t* __restrict__ gA_e = gA_i + e * N;
              scalar_t* __restrict__ gB_row = gBt;
              scalar_t* __restrict__ gC_row = gCt;
              scalar_t* __restrict__ a_e = a.data();
              scalar_t* __restrict__ g_e = total.data();
              _Pragma("GCC ivdep")  // no overlap between the rows: let the loop vectorise
              for (int64_t n = 0; n < N; ++n) {  // no sums in this loop, so that it vectorises
                a_e[n] = exp_approx(d * Ae[n]);
                g_e[n] = ge[n] + Ct[n] * gy;  // g_t
                gC_row[n] += he_now[n] * gy;
                gB_row[n] += g_e[n] * d * u;
                gA_e[n] += g_e[n] * d * a_e[n] * he_prev[n];
                ge[n] = a_e[n] * g_e[n];
              }
              scalar_t dx = 0, dd = 0;
              for (int64_t n = 0; n < N; ++n) {
                dx += g_e[n] * Bt[n];
                dd += g_e[n] * (Ae[n] * a_e[n] * he_prev[n] + Bt[n] * u);
              }
              pgx[row * E + e] = dx * d + pD[e] * gy;
              pgd[row * E + e] = dd;
              gD_i[e] += u * gy;
            }
          }
        }
      }
    });
  });
  return {gx, gdelta, gA.sum(0), gB, gC, gD.sum(0), gh0};
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
}
