// fleetwm's native CPU kernel for planning (README, "Planning throughput").
//
// fleetwm_mlp runs every layer of an ensemble MLP on a tile of rows that stays in L1 cache: the
// input parts are joined as the tile is loaded, and each layer's bias and ReLU are applied in
// registers as its result is written. Torch runs the same MLP as one matmul and one pass per layer
// over the whole batch; at 64 units those passes cost as much as the arithmetic.
// fleetwm_gaussian_step adds a dynamics model's step to the last layer: the mean next state, the
// bounded log-variance and the draw, with the standard normal noise drawn in place from a
// counter-based stream (fleetwm_normal draws the same stream into a buffer).
//
// Built by worldmodel/native/build.py (g++ -O3 -march=native) and called through ctypes by
// worldmodel/native/__init__.py: plain C ABI, no torch headers. simd.h holds the vector operations
// and the elementwise math; AVX-512 and AVX2 get hand-placed broadcasts, maxima and masked moves,
// other CPUs GCC's generic vectors.
#include <algorithm>
#include <vector>

#include "simd.h"

#if defined(__AVX512F__)
constexpr int NVMAX = 4;  // vector columns per register block
// Rows per register block for NV vector columns: as many accumulators as 32 registers hold beside
// NV weights and one broadcast, and at least 8 of them to hide the FMA latency.
constexpr int rows_for(int nv) { return nv == 4 ? 6 : nv == 3 ? 8 : 12; }
#else
constexpr int NVMAX = 2;
constexpr int rows_for(int nv) { return nv == 2 ? 6 : 12; }  // 16 registers
#endif
constexpr int TILE = 24;  // rows per tile: a multiple of every rows_for
static_assert(TILE % rows_for(1) == 0 && TILE % rows_for(2) == 0 && TILE % rows_for(NVMAX) == 0 &&
              TILE % rows_for(NVMAX > 2 ? 3 : 2) == 0, "TILE must be a multiple of every register block");

// out[RB rows, NV*VW columns] = act(in[RB, K] @ w[K, columns] + b[columns]); w's rows are ldw apart.
template <int NV, bool RELU, int RB = rows_for(NV)>
static inline void block(const float* in, int ldi, int k_dim, const float* w, int ldw, const float* b, float* out,
                         int ldo) {
    vf acc[RB][NV];
    for (int j = 0; j < NV; j++) {
        vf bj = *(const vf*)(b + VW * j);
        for (int r = 0; r < RB; r++) acc[r][j] = bj;
    }
    for (int k = 0; k < k_dim; k++) {
        vf wk[NV];
        for (int j = 0; j < NV; j++) wk[j] = *(const vf*)(w + (long)k * ldw + VW * j);
        for (int r = 0; r < RB; r++) {
            vf x = splat(in + r * ldi + k);
            for (int j = 0; j < NV; j++) acc[r][j] += x * wk[j];
        }
    }
    for (int r = 0; r < RB; r++)
        for (int j = 0; j < NV; j++) *(vf*)(out + r * ldo + VW * j) = RELU ? relu(acc[r][j]) : acc[r][j];
}

template <int NV, bool RELU>
static void columns(const float* in, int k_dim, const float* w, int ldw, const float* b, float* out, int ldo) {
    for (int r = 0; r < TILE; r += rows_for(NV))
        block<NV, RELU>(in + r * k_dim, k_dim, k_dim, w, ldw, b, out + r * ldo, ldo);
}

template <bool RELU>
static void column_groups(const float* in, int k_dim, const float* w, const float* b, int o, float* out) {
    for (int c = 0; c < o; c += NVMAX * VW) {
        switch (std::min(NVMAX, (o - c) / VW)) {
            case 4: columns<NVMAX >= 4 ? 4 : 1, RELU>(in, k_dim, w + c, o, b + c, out + c, o); break;
            case 3: columns<NVMAX >= 3 ? 3 : 1, RELU>(in, k_dim, w + c, o, b + c, out + c, o); break;
            case 2: columns<2, RELU>(in, k_dim, w + c, o, b + c, out + c, o); break;
            default: columns<1, RELU>(in, k_dim, w + c, o, b + c, out + c, o); break;
        }
    }
}

// A one-output last layer (a reward): out[r] = in[r] . w + b, one dot product per row.
static void dot_layer(const float* in, int k_dim, const float* w, const float* b, float* out) {
    for (int r = 0; r < TILE; r++) {
        vf acc = vf{};
        for (int k = 0; k < k_dim; k += VW) acc += *(const vf*)(in + r * k_dim + k) * *(const vf*)(w + k);
        out[r] = *b + hsum(acc);
    }
}

// One layer over a tile: in (TILE, k_dim) -> out (TILE, o), o a multiple of VW or 1.
static void layer(const float* in, int k_dim, const float* w, const float* b, int o, float* out, bool relu) {
    if (o == 1) return dot_layer(in, k_dim, w, b, out);
    relu ? column_groups<true>(in, k_dim, w, b, o, out) : column_groups<false>(in, k_dim, w, b, o, out);
}

// An ensemble MLP as packed by worldmodel/native/__init__.py (PackedMLP).
//   dims:    n_layers + 1 widths: the input width (the parts' widths summed), then each layer's output
//            width padded to a multiple of fleetwm_vector_width() with zero weights; a last layer
//            of width 1 is not padded (a dot product per row). A hidden layer's input width is
//            the previous width, padded.
//   packed:  per member, member_size floats: for each layer its weights (in x out, row-major), then
//            its bias (out). ReLU follows every layer but the last.
struct Net {
    int members, n_layers;
    const long* dims;
    const float* packed;
    long member_size;
};

// Inputs: part p's element [e, r, d] is at ptr[p] + e*member_stride[p] + r*row_stride[p] + d
// (a member stride of 0 shares the part among members). The MLP's input is the parts side by side.
struct Parts {
    int n;
    const float* const* ptr;
    const long *dims, *member_stride, *row_stride;
    const float* at(int p, int e, long r) const { return ptr[p] + e * member_stride[p] + r * row_stride[p]; }
};

// Runs the MLP on rows r0 .. r0+n-1 of member e (n <= TILE) in buf (2 * TILE * width floats);
// returns the last layer's outputs, TILE rows of dims[n_layers].
static const float* run_tile(const Net& net, const Parts& parts, int e, long r0, int n, float* buf, int width) {
    const int in_dim = (int)net.dims[0];
    float *cur = buf, *next = buf + (long)TILE * width;
    // Rows past the end repeat the last row; their outputs are never read.
    for (int r = 0; r < TILE; r++) {
        float* dst = cur + (long)r * in_dim;
        for (int p = 0; p < parts.n; p++) {
            const float* src = parts.at(p, e, r0 + std::min(r, n - 1));
            copy_row(src, dst, (int)parts.dims[p]);
            dst += parts.dims[p];
        }
    }
    const float* w = net.packed + e * net.member_size;
    int k_dim = in_dim;
    for (int l = 1; l <= net.n_layers; l++) {
        const int o = (int)net.dims[l];
        const float* b = w + (long)k_dim * o;
        layer(cur, k_dim, w, b, o, next, l < net.n_layers);
        std::swap(cur, next);
        w = b + o;
        k_dim = o;
    }
    return cur;
}

// Every tile of every member through the MLP, then `epilogue(e, r0, n, outputs)`, over `threads`
// OpenMP threads.
template <class Epilogue>
static void run(const Net& net, const Parts& parts, long rows, int threads, Epilogue epilogue) {
    const long tiles = (rows + TILE - 1) / TILE;
    int width = 0;
    for (int l = 0; l <= net.n_layers; l++) width = std::max(width, (int)net.dims[l]);
    #pragma omp parallel num_threads(threads) if (threads > 1)
    {
        std::vector<float> buf(2L * TILE * width);
        #pragma omp for schedule(static)
        for (long job = 0; job < tiles * net.members; job++) {
            const int e = (int)(job / tiles);
            const long r0 = (job % tiles) * TILE;
            const int n = (int)std::min<long>(TILE, rows - r0);
            epilogue(e, r0, n, run_tile(net, parts, e, r0, n, buf.data(), width));
        }
    }
}

extern "C" {

int fleetwm_vector_width() { return VW; }

// out[0 .. n) = draws 0 .. n-1 of the counter-based standard normal stream `seed` (see normal()).
void fleetwm_normal(float* out, long n, unsigned long long seed, int threads) {
    const long blocks = (n + LANES - 1) / LANES;
    #pragma omp parallel for num_threads(threads) if (threads > 1) schedule(static)
    for (long b = 0; b < blocks; b++) {
        vf z[UNROLL];
        normal(z, (unsigned)(b * LANES), (unsigned)seed, (unsigned)(seed >> 32));
        const long first = b * LANES;
        if (first + LANES <= n)
            for (int u = 0; u < UNROLL; u++) *(vf*)(out + first + u * VW) = z[u];
        else
            for (long i = first; i < n; i++) out[i] = z[(i - first) / VW][(i - first) % VW];
    }
}

// out (members, rows, dims[n_layers]) contiguous = the MLP of each member on its rows.
void fleetwm_mlp(int members, long rows, int n_parts, const float* const* parts, const long* part_dims,
                 const long* member_strides, const long* row_strides, int n_layers, const long* dims,
                 const float* packed, long member_size, float* out, int threads) {
    const Net net{members, n_layers, dims, packed, member_size};
    const Parts in{n_parts, parts, part_dims, member_strides, row_strides};
    const long o = dims[n_layers];
    run(net, in, rows, threads, [&](int e, long r0, int n, const float* y) {
        std::copy(y, y + n * o, out + (e * rows + r0) * o);
    });
}

// A dynamics step: the MLP's outputs are the state change's mean (the first S) and, for a
// probabilistic model (lo not null), its log-variance (the next S). Writes mean = state + change,
// with the state part 0, and for a probabilistic model
// draw = mean + exp(soft_bound(logvar, lo, hi) / 2 + log_scale) * z, soft_bound as
// worldmodel.nn.soft_bound, z standard normal: noise's element [e, r, d] at
// noise + e*noise_ms + r*noise_rs + d, or where noise is null, drawn from stream `seed`.
// mean's and draw's element [e, r, d] are at e*out_ms + r*out_rs + d; mean may be null (not written)
// unless lo is, draw is unused when lo is null.
void fleetwm_gaussian_step(int members, long rows, int n_parts, const float* const* parts, const long* part_dims,
                           const long* member_strides, const long* row_strides, int n_layers, const long* dims,
                           const float* packed, long member_size, int obs_dim, const float* noise, long noise_ms,
                           long noise_rs, unsigned long long seed, const float* lo, const float* hi,
                           const float* log_scale, float* mean, float* draw, long out_ms, long out_rs,
                           int threads) {
    const Net net{members, n_layers, dims, packed, member_size};
    const Parts in{n_parts, parts, part_dims, member_strides, row_strides};
    const long o = dims[n_layers];
    const int s_dim = obs_dim, staged = (TILE * s_dim + LANES - 1) / LANES * LANES;
    // The head's std, exp(soft_bound(x, lo, hi) / 2 + log_scale) with soft_bound's two softplus
    // written out, is C sqrt(1 + G / (1 + exp(hi - x))) with C = exp(lo / 2 + log_scale) and
    // G = exp(hi - lo) per dimension: one exp, one reciprocal and one square root per element.
    // A tile's log-variances are staged row after row (element r*S + d), so it runs on whole
    // vectors; the per-dimension constants are laid out the same way once.
    std::vector<float> consts(lo != nullptr ? 3L * staged : 0);
    for (long i = 0; i < (long)consts.size() / 3; i++) {
        const int d = (int)(i % s_dim);
        consts[i] = hi[d];
        consts[staged + i] = std::exp(hi[d] - lo[d]);
        consts[2 * staged + i] = std::exp(0.5f * lo[d] + log_scale[d]);
    }
    run(net, in, rows, threads, [&](int e, long r0, int n, const float* y) {
        thread_local std::vector<float> stage;
        stage.resize(3L * staged);
        float *m = stage.data(), *lv = m + staged, *z = lv + staged;
        for (int r = 0; r < n; r++) {
            add_row(in.at(0, e, r0 + r), y + r * o, m + r * s_dim, s_dim);
            if (mean != nullptr) copy_row(m + r * s_dim, mean + e * out_ms + (r0 + r) * out_rs, s_dim);
        }
        if (lo == nullptr) return;
        const int used = n * s_dim, padded = (used + LANES - 1) / LANES * LANES;
        for (int r = 0; r < n; r++) copy_row(y + r * o + s_dim, lv + r * s_dim, s_dim);
        std::fill(lv + used, lv + padded, 0.0f);
        if (noise != nullptr)
            for (int r = 0; r < n; r++) copy_row(noise + e * noise_ms + (r0 + r) * noise_rs, z + r * s_dim, s_dim);
        const unsigned base = (unsigned)((e * rows + r0) * s_dim);
        const float *h = consts.data(), *g = h + staged, *c = g + staged;
        for (int i = 0; i < padded; i += LANES) {
            vf zi[UNROLL], x[UNROLL];
            if (noise != nullptr)
                for (int u = 0; u < UNROLL; u++) zi[u] = *(const vf*)(z + i + u * VW);
            else  // drawn here: element (e, r, d) of stream `seed`
                normal(zi, base + i, (unsigned)seed, (unsigned)(seed >> 32));
            for (int u = 0; u < UNROLL; u++) x[u] = *(const vf*)(h + i + u * VW) - *(const vf*)(lv + i + u * VW);
            vexp(x);
            for (int u = 0; u < UNROLL; u++) {
                const int at = i + u * VW;
                const vf sd = *(const vf*)(c + at) * vsqrt(1.0f + *(const vf*)(g + at) * vrcp(1.0f + x[u]));
                *(vf*)(z + at) = sd * zi[u];
            }
        }
        for (int r = 0; r < n; r++)
            add_row(m + r * s_dim, z + r * s_dim, draw + e * out_ms + (r0 + r) * out_rs, s_dim);
    });
}

}  // extern "C"
