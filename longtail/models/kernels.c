/* Native kernels of longtail/models (built at first use by longtail/models/kernels.py with the
 * system C compiler; without one, the same functions run as torch operations):
 *
 * - dropout_apply: inverted dropout whose keep decisions are a hash of (key, element index), so a
 *   mask costs no random-number generator calls and is never stored (longtail/models/dropout.py);
 * - attention_forward / attention_backward: multi-head self-attention of tiny heads (scores,
 *   key mask, softmax, hashed dropout of the probabilities, weighted values) in one pass per row;
 * - layer_norm_forward / layer_norm_backward: LayerNorm over a small last dimension;
 * - keep_rows: zero the padded steps of a (rows, width) tensor (a select, not a product);
 * - lstm_forward_step / lstm_backward_step: one wavefront step of the stacked LSTM of
 *   longtail/models/recurrent.py, fused: the gate products and every element-wise operation of the
 *   active layers in one pass, forward and backward.
 *
 * LSTM:
 * Layouts are (layer, feature, batch) with the batch innermost. For each hidden unit j the four
 * gate rows (i, f, g, o) are accumulated together over a chunk of CH batch columns held in vector
 * registers, then activated and combined at once; the backward pass does the same for the gate
 * gradients and accumulates the input and weight gradients in the same pass. Built at first use by
 * longtail/models/kernels.py with the system C compiler (the loops are written for its
 * vectoriser); without one, recurrent.py runs the same step as torch operations.
 *
 * Shapes: H hidden size, B batch, K = 2H + 1 (a layer's input rows [0, H), its previous state
 * [H, 2H), a constant 1 for the biases [2H]); w is (layers, 4H, K).
 */
#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* ---------------------------------------------------------------- dropout */
/* a 32-bit integer hash (Wellons' lowbias32): the element's uniform draw */
static inline uint32_t mix32(uint32_t x) {
    x ^= x >> 16;
    x *= 0x7feb352dU;
    x ^= x >> 15;
    x *= 0x846ca68bU;
    x ^= x >> 16;
    return x;
}
static inline uint32_t draw(uint32_t key, uint64_t index) { return mix32((uint32_t)index * 0x9E3779B9U + key); }

/* y[i] = x[i] * scale where draw(key, offset + i) >= threshold, else 0 (y may be x) */
void dropout_apply(long n, const float *x, float *y, uint32_t key, uint32_t threshold, float scale, long offset) {
    for (long i = 0; i < n; i++) y[i] = draw(key, (uint64_t)(offset + i)) >= threshold ? x[i] * scale : 0.0f;
}

/* a chunk of CH = VW * NV batch columns: NV vectors of VW floats per gate stay in registers */
#if defined(__AVX512F__)
#define VW 16
#else
#define VW 8
#endif
#define NV (64 / VW > 4 ? 4 : 64 / VW)
#define CH (VW * NV)
typedef float vf __attribute__((vector_size(VW * sizeof(float))));

static inline vf vload(const float *p) {
    vf v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline void vstore(float *p, vf v) { memcpy(p, &v, sizeof v); }
/* kept out of line: GCC vectorises expf in these loops only when they are not inlined */
#define NOINLINE __attribute__((noinline))

static inline float sigm(float x) { return 1.0f / (1.0f + expf(-x)); }
static inline float tanhx(float x) { return 1.0f - 2.0f / (1.0f + expf(2.0f * x)); }

/* gates of unit j over columns [b0, b0 + nb): acc[q][b] = xp (row q*H + j) + sum_k w[q*H + j][k] z[k] */
NOINLINE static void gate_products(int H, int B, int K, int j, int b0, int nb, const float *restrict w,
                                   const float *restrict z, const float *restrict xp, float acc[4][CH]) {
    for (int q = 0; q < 4; q++) {
        if (xp != NULL) {
            for (int b = 0; b < nb; b++) acc[q][b] = xp[(size_t)(q * H + j) * B + b0 + b];
        } else {
            for (int b = 0; b < nb; b++) acc[q][b] = 0.0f;
        }
    }
    const float *wi = w + (size_t)(0 * H + j) * K, *wf = w + (size_t)(1 * H + j) * K;
    const float *wg = w + (size_t)(2 * H + j) * K, *wo = w + (size_t)(3 * H + j) * K;
    for (int k = 0; k < K; k++) {
        const float *zk = z + (size_t)k * B + b0;
        const float a = wi[k], f = wf[k], g = wg[k], o = wo[k];
        for (int b = 0; b < nb; b++) {
            float v = zk[b];
            acc[0][b] += a * v;
            acc[1][b] += f * v;
            acc[2][b] += g * v;
            acc[3][b] += o * v;
        }
    }
}

/* gate_products for a whole chunk (nb == CH), the accumulators in registers */
NOINLINE static void gate_products_full(int H, int B, int K, int j, int b0, const float *restrict w,
                                        const float *restrict z, const float *restrict xp, float acc[4][CH]) {
    vf a[4][NV];
    for (int q = 0; q < 4; q++)
        for (int u = 0; u < NV; u++)
            a[q][u] = xp != NULL ? vload(xp + (size_t)(q * H + j) * B + b0 + u * VW) : (vf){0};
    const float *wi = w + (size_t)(0 * H + j) * K, *wf = w + (size_t)(1 * H + j) * K;
    const float *wg = w + (size_t)(2 * H + j) * K, *wo = w + (size_t)(3 * H + j) * K;
    for (int k = 0; k < K; k++) {
        const float *zk = z + (size_t)k * B + b0;
        const float ci = wi[k], cf = wf[k], cg = wg[k], co = wo[k];
        for (int u = 0; u < NV; u++) {
            vf v = vload(zk + u * VW);
            a[0][u] += ci * v;
            a[1][u] += cf * v;
            a[2][u] += cg * v;
            a[3][u] += co * v;
        }
    }
    for (int q = 0; q < 4; q++)
        for (int u = 0; u < NV; u++) vstore(acc[q] + u * VW, a[q][u]);
}

NOINLINE static void activate(int nb, float acc[4][CH], const float *restrict c_prev, float *restrict c_new,
                              float *restrict tc, float *restrict h) {
    for (int b = 0; b < nb; b++) {
        float i = sigm(acc[0][b]), f = sigm(acc[1][b]), g = tanhx(acc[2][b]), o = sigm(acc[3][b]);
        acc[0][b] = i;
        acc[1][b] = f;
        acc[2][b] = g;
        acc[3][b] = o;
        float c = f * c_prev[b] + i * g;
        float t = tanhx(c);
        c_new[b] = c;
        tc[b] = t;
        h[b] = o * t;
    }
}

/* Forward step of the n active layers (from the first active one).
 * w:      (n, 4H, K) their weights          z:      (n, K, B) their inputs at this step
 * xp0:    (4H, B) the first layer's input projection when it is layer 0, else NULL
 * acts:   (n, 4H, B) out: sigmoid(i), sigmoid(f), tanh(g), sigmoid(o)
 * c_prev: (n, H, B)   c_new: (n, H, B)   tc: (n, H, B) out: tanh(c_new)
 * z_next: (n + 1, K, B) the next step's inputs: h goes to rows [H, 2H) of the same layer and, for
 *         the first n_up layers, times the dropout factor, to rows [0, H) of the layer above
 * drop:   whether the output is dropped out before the layer above: layer l's element e is kept
 *         (times scale) where draw(key, index + l * layer_stride + e) >= threshold */
void lstm_forward_step(int n, int H, int B, int K, int n_up, const float *w, const float *z, const float *xp0,
                       float *acts, const float *c_prev, float *c_new, float *tc, float *z_next, int drop,
                       uint32_t key, uint32_t threshold, float scale, long index, long layer_stride) {
    const size_t HB = (size_t)H * B;
    float acc[4][CH];
    for (int l = 0; l < n; l++) {
        const float *wl = w + (size_t)l * 4 * H * K, *zl = z + (size_t)l * K * B;
        float *al = acts + (size_t)l * 4 * HB;
        float *hl = z_next + (size_t)l * K * B + HB;
        float *up = l < n_up ? z_next + (size_t)(l + 1) * K * B : NULL;
        const long ml = index + (long)l * layer_stride;
        for (int b0 = 0; b0 < B; b0 += CH) {  /* column chunk outside: its inputs stay in L1 over all units */
            for (int j = 0; j < H; j++) {
                int nb = B - b0 < CH ? B - b0 : CH;
                size_t e = (size_t)j * B + b0;
                if (nb == CH)
                    gate_products_full(H, B, K, j, b0, wl, zl, l == 0 ? xp0 : NULL, acc);
                else
                    gate_products(H, B, K, j, b0, nb, wl, zl, l == 0 ? xp0 : NULL, acc);
                activate(nb, acc, c_prev + (size_t)l * HB + e, c_new + (size_t)l * HB + e, tc + (size_t)l * HB + e,
                         hl + e);
                for (int q = 0; q < 4; q++) memcpy(al + (size_t)q * HB + e, acc[q], sizeof(float) * nb);
                if (up != NULL) {
                    if (drop) {
                        dropout_apply(nb, hl + e, up + e, key, threshold, scale, ml + (long)e);
                    } else {
                        memcpy(up + e, hl + e, sizeof(float) * nb);
                    }
                }
            }
        }
    }
}

/* gate gradients of unit j over a column chunk; dc is updated to the carry into the previous step */
NOINLINE static void gate_gradients(int nb, size_t HB, const float *restrict d, const float *restrict a,
                                    const float *restrict c_prev, const float *restrict tc, float *restrict dc,
                                    float gp[4][CH]) {
    for (int b = 0; b < nb; b++) {
        float i = a[b], f = a[HB + b], g = a[2 * HB + b], o = a[3 * HB + b];
        float t = tc[b];
        float dcv = dc[b] + d[b] * o * (1.0f - t * t);
        gp[0][b] = dcv * g * i * (1.0f - i);
        gp[1][b] = dcv * c_prev[b] * f * (1.0f - f);
        gp[2][b] = dcv * i * (1.0f - g * g);
        gp[3][b] = d[b] * t * o * (1.0f - o);
        dc[b] = dcv * f;
    }
}

/* gz[k] += sum_q w[q*H + j][k] gp[q] and gw[q*H + j][k] += gp[q] . z[k], over a column chunk */
NOINLINE static void gate_backprop(int H, int B, int K, int j, int b0, int nb, const float *restrict w,
                                   const float *restrict z, float gp[4][CH], float *restrict gz,
                                   float *restrict gw) {
    const float *wi = w + (size_t)(0 * H + j) * K, *wf = w + (size_t)(1 * H + j) * K;
    const float *wg = w + (size_t)(2 * H + j) * K, *wo = w + (size_t)(3 * H + j) * K;
    float *gwi = gw + (size_t)(0 * H + j) * K, *gwf = gw + (size_t)(1 * H + j) * K;
    float *gwg = gw + (size_t)(2 * H + j) * K, *gwo = gw + (size_t)(3 * H + j) * K;
    for (int k = 0; k < K; k++) {
        const float *zk = z + (size_t)k * B + b0;
        float *gzk = gz + (size_t)k * B + b0;
        const float a = wi[k], f = wf[k], g = wg[k], o = wo[k];
        float si = 0.0f, sf = 0.0f, sg = 0.0f, so = 0.0f;
        for (int b = 0; b < nb; b++) {
            float v = zk[b];
            si += gp[0][b] * v;
            sf += gp[1][b] * v;
            sg += gp[2][b] * v;
            so += gp[3][b] * v;
            gzk[b] += a * gp[0][b] + f * gp[1][b] + g * gp[2][b] + o * gp[3][b];
        }
        gwi[k] += si;
        gwf[k] += sf;
        gwg[k] += sg;
        gwo[k] += so;
    }
}

/* gate_backprop for a whole chunk (nb == CH), the gate gradients in registers */
NOINLINE static void gate_backprop_full(int H, int B, int K, int j, int b0, const float *restrict w,
                                        const float *restrict z, float gp[4][CH], float *restrict gz,
                                        float *restrict gw) {
    vf g[4][NV];
    for (int q = 0; q < 4; q++)
        for (int u = 0; u < NV; u++) g[q][u] = vload(gp[q] + u * VW);
    const float *wi = w + (size_t)(0 * H + j) * K, *wf = w + (size_t)(1 * H + j) * K;
    const float *wg = w + (size_t)(2 * H + j) * K, *wo = w + (size_t)(3 * H + j) * K;
    float *gwi = gw + (size_t)(0 * H + j) * K, *gwf = gw + (size_t)(1 * H + j) * K;
    float *gwg = gw + (size_t)(2 * H + j) * K, *gwo = gw + (size_t)(3 * H + j) * K;
    for (int k = 0; k < K; k++) {
        const float *zk = z + (size_t)k * B + b0;
        float *gzk = gz + (size_t)k * B + b0;
        const float ci = wi[k], cf = wf[k], cg = wg[k], co = wo[k];
        vf si = {0}, sf = {0}, sg = {0}, so = {0};
        for (int u = 0; u < NV; u++) {
            vf v = vload(zk + u * VW);
            si += g[0][u] * v;
            sf += g[1][u] * v;
            sg += g[2][u] * v;
            so += g[3][u] * v;
            vstore(gzk + u * VW, vload(gzk + u * VW) + ci * g[0][u] + cf * g[1][u] + cg * g[2][u] + co * g[3][u]);
        }
        float ti = 0.0f, tf = 0.0f, tg = 0.0f, to = 0.0f;
        for (int e = 0; e < VW; e++) {
            ti += si[e];
            tf += sf[e];
            tg += sg[e];
            to += so[e];
        }
        gwi[k] += ti;
        gwf[k] += tf;
        gwg[k] += tg;
        gwo[k] += to;
    }
}

/* Backward step of the n active layers (from the first active one).
 * w, z, acts, c_prev, tc: as in the forward step
 * gz_next: (n + 1, K, B) d loss / d z at the next step (rows [H, 2H): the same layer's next step;
 *          rows [0, H) of the layer above: its input), or NULL at the last step
 * drop, key, threshold, scale, index, layer_stride: as in the forward step
 * g_top:   (H, B) d loss / d (the top layer's output at this step) for the last active layer, or NULL
 * d:       (H, B) scratch
 * dc:      (n, H, B) in: d loss / d c carried from the next step; out: carried to the previous step
 * gz:      (n, K, B) out: d loss / d z at this step
 * gw:      (n, 4H, K) the weight gradients, accumulated
 * gxp0:    (4H, B) out: d loss / d xp0 at this step when the first layer is layer 0, else NULL */
void lstm_backward_step(int n, int H, int B, int K, int n_up, const float *w, const float *z, const float *acts,
                        const float *c_prev, const float *tc, const float *gz_next, int drop, uint32_t key,
                        uint32_t threshold, float scale, long index, long layer_stride, const float *g_top,
                        float *d, float *dc, float *gz, float *gw, float *gxp0) {
    const size_t HB = (size_t)H * B;
    float gp[4][CH];
    for (int l = 0; l < n; l++) {
        if (gz_next != NULL) {
            memcpy(d, gz_next + (size_t)l * K * B + HB, sizeof(float) * HB);
            if (l < n_up) {
                const float *above = gz_next + (size_t)(l + 1) * K * B;
                if (drop) {
                    const long ml = index + (long)l * layer_stride;
                    for (size_t e = 0; e < HB; e++)
                        d[e] += draw(key, (uint64_t)(ml + (long)e)) >= threshold ? above[e] * scale : 0.0f;
                } else {
                    for (size_t e = 0; e < HB; e++) d[e] += above[e];
                }
            }
        } else {
            memset(d, 0, sizeof(float) * HB);
        }
        if (g_top != NULL && l == n - 1)
            for (size_t e = 0; e < HB; e++) d[e] += g_top[e];
        const float *wl = w + (size_t)l * 4 * H * K, *zl = z + (size_t)l * K * B;
        const float *al = acts + (size_t)l * 4 * HB;
        float *gzl = gz + (size_t)l * K * B;
        memset(gzl, 0, sizeof(float) * K * B);
        for (int b0 = 0; b0 < B; b0 += CH) {
            for (int j = 0; j < H; j++) {
                int nb = B - b0 < CH ? B - b0 : CH;
                size_t e = (size_t)j * B + b0;
                gate_gradients(nb, HB, d + e, al + e, c_prev + (size_t)l * HB + e, tc + (size_t)l * HB + e,
                               dc + (size_t)l * HB + e, gp);
                if (l == 0 && gxp0 != NULL)
                    for (int q = 0; q < 4; q++) memcpy(gxp0 + (size_t)q * HB + e, gp[q], sizeof(float) * nb);
                if (nb == CH)
                    gate_backprop_full(H, B, K, j, b0, wl, zl, gp, gzl, gw + (size_t)l * 4 * H * K);
                else
                    gate_backprop(H, B, K, j, b0, nb, wl, zl, gp, gzl, gw + (size_t)l * 4 * H * K);
            }
        }
    }
}

/* ---------------------------------------------------------------- attention */
/* Multi-head self-attention over real keys for tiny heads (longtail/models/encoders.py): per row b
 * and head, scores = q k^T * sc over the keys (padded keys get -FLT_MAX, so a row without any real
 * key attends uniformly, as masked_fill with the float minimum does), softmax, dropout of the
 * probabilities (hashed, index ((b * nh + head) * T + t) * T + u), then the weighted sum of v.
 * qkv: (B, T, 3 * nh * hd) the q, k, v projections side by side; key: (B, T) 1 at real steps;
 * ctx: (B, T, nh * hd) out; probs: (B, nh, T, T) out, the softmax (kept for the backward pass). */
NOINLINE static void attention_row(int T, int hd, int G, const float *restrict qkv, int head, const unsigned char *key,
                                   float sc, float *restrict ctx, float *restrict probs, int drop, uint32_t dkey,
                                   uint32_t threshold, float dscale, uint64_t index) {
    const int H = G / 3;
    float kT[hd][T], vT[hd][T], s[T], pd[T];
    for (int u = 0; u < T; u++)
        for (int d = 0; d < hd; d++) {
            kT[d][u] = qkv[(size_t)u * G + H + head * hd + d];
            vT[d][u] = qkv[(size_t)u * G + 2 * H + head * hd + d];
        }
    for (int t = 0; t < T; t++) {
        const float *q = qkv + (size_t)t * G + head * hd;
        for (int u = 0; u < T; u++) s[u] = 0.0f;
        for (int d = 0; d < hd; d++) {
            const float qd = q[d] * sc;
            for (int u = 0; u < T; u++) s[u] += qd * kT[d][u];
        }
        float m = -FLT_MAX;
        for (int u = 0; u < T; u++) {
            if (!key[u]) s[u] = -FLT_MAX;
            m = s[u] > m ? s[u] : m;
        }
        float total = 0.0f;
        for (int u = 0; u < T; u++) {
            s[u] = expf(s[u] - m);
            total += s[u];
        }
        const float inv = 1.0f / total;
        float *p = probs + (size_t)t * T;
        for (int u = 0; u < T; u++) p[u] = s[u] * inv;
        if (drop) {
            for (int u = 0; u < T; u++)
                pd[u] = draw(dkey, index + (uint64_t)t * T + (uint64_t)u) >= threshold ? p[u] * dscale : 0.0f;
        } else {
            for (int u = 0; u < T; u++) pd[u] = p[u];
        }
        float *c = ctx + (size_t)t * H + head * hd;
        for (int d = 0; d < hd; d++) {
            float acc = 0.0f;
            for (int u = 0; u < T; u++) acc += pd[u] * vT[d][u];
            c[d] = acc;
        }
    }
}

void attention_forward(int B, int T, int nh, int hd, const float *qkv, const unsigned char *key, float *ctx,
                       float *probs, int drop, uint32_t dkey, uint32_t threshold, float dscale) {
    const int H = nh * hd, G = 3 * H;
    const float sc = 1.0f / sqrtf((float)hd);
    for (int b = 0; b < B; b++)
        for (int head = 0; head < nh; head++)
            attention_row(T, hd, G, qkv + (size_t)b * T * G, head, key + (size_t)b * T, sc, ctx + (size_t)b * T * H,
                          probs + ((size_t)b * nh + head) * T * T, drop, dkey, threshold, dscale,
                          ((uint64_t)b * nh + head) * T * T);
}

NOINLINE static void attention_row_backward(int T, int hd, int G, const float *restrict qkv, int head,
                                            const unsigned char *key, float sc, const float *restrict probs,
                                            const float *restrict gctx, float *restrict gqkv, int drop,
                                            uint32_t dkey, uint32_t threshold, float dscale, uint64_t index) {
    const int H = G / 3;
    float kT[hd][T], vT[hd][T], gk[hd][T], gv[hd][T], dp[T], ds[T], keep[T];
    for (int u = 0; u < T; u++)
        for (int d = 0; d < hd; d++) {
            kT[d][u] = qkv[(size_t)u * G + H + head * hd + d];
            vT[d][u] = qkv[(size_t)u * G + 2 * H + head * hd + d];
            gk[d][u] = 0.0f;
            gv[d][u] = 0.0f;
        }
    for (int t = 0; t < T; t++) {
        const float *p = probs + (size_t)t * T;
        const float *g = gctx + (size_t)t * H + head * hd;
        const float *q = qkv + (size_t)t * G + head * hd;
        if (drop) {
            for (int u = 0; u < T; u++)
                keep[u] = draw(dkey, index + (uint64_t)t * T + (uint64_t)u) >= threshold ? dscale : 0.0f;
        } else {
            for (int u = 0; u < T; u++) keep[u] = 1.0f;
        }
        for (int u = 0; u < T; u++) dp[u] = 0.0f;
        for (int d = 0; d < hd; d++) {
            const float gd = g[d];
            for (int u = 0; u < T; u++) {
                dp[u] += gd * vT[d][u];
                gv[d][u] += gd * p[u] * keep[u];
            }
        }
        float row = 0.0f;
        for (int u = 0; u < T; u++) {
            dp[u] *= keep[u];
            row += p[u] * dp[u];
        }
        for (int u = 0; u < T; u++) ds[u] = key[u] ? p[u] * (dp[u] - row) * sc : 0.0f;
        float *gq = gqkv + (size_t)t * G + head * hd;
        for (int d = 0; d < hd; d++) {
            float acc = 0.0f;
            const float qd = q[d];
            for (int u = 0; u < T; u++) {
                acc += ds[u] * kT[d][u];
                gk[d][u] += ds[u] * qd;
            }
            gq[d] = acc;
        }
    }
    for (int u = 0; u < T; u++)
        for (int d = 0; d < hd; d++) {
            gqkv[(size_t)u * G + H + head * hd + d] = gk[d][u];
            gqkv[(size_t)u * G + 2 * H + head * hd + d] = gv[d][u];
        }
}

/* gctx: (B, T, nh * hd) d loss / d ctx; gqkv: (B, T, 3 * nh * hd) out */
void attention_backward(int B, int T, int nh, int hd, const float *qkv, const unsigned char *key,
                        const float *probs, const float *gctx, float *gqkv, int drop, uint32_t dkey,
                        uint32_t threshold, float dscale) {
    const int H = nh * hd, G = 3 * H;
    const float sc = 1.0f / sqrtf((float)hd);
    for (int b = 0; b < B; b++)
        for (int head = 0; head < nh; head++)
            attention_row_backward(T, hd, G, qkv + (size_t)b * T * G, head, key + (size_t)b * T, sc,
                                   probs + ((size_t)b * nh + head) * T * T, gctx + (size_t)b * T * H,
                                   gqkv + (size_t)b * T * G, drop, dkey, threshold, dscale,
                                   ((uint64_t)b * nh + head) * T * T);
}

/* ---------------------------------------------------------------- layer norm, masking */
/* LayerNorm over the last dimension (width D, small: the models' hidden sizes) of n rows:
 * y = (x - mean) * rstd * weight + bias; mean and rstd kept for the backward pass. */
void layer_norm_forward(long n, int D, const float *x, const float *weight, const float *bias, float eps, float *y,
                        float *mean, float *rstd) {
    for (long r = 0; r < n; r++) {
        const float *xr = x + r * D;
        float *yr = y + r * D;
        float m = 0.0f;
        for (int d = 0; d < D; d++) m += xr[d];
        m /= D;
        float v = 0.0f;
        for (int d = 0; d < D; d++) v += (xr[d] - m) * (xr[d] - m);
        v /= D;
        const float s = 1.0f / sqrtf(v + eps);
        for (int d = 0; d < D; d++) yr[d] = (xr[d] - m) * s * weight[d] + bias[d];
        mean[r] = m;
        rstd[r] = s;
    }
}

/* gx = rstd * (g*w - mean(g*w) - xhat * mean(g*w * xhat)); gw += g * xhat; gb += g */
void layer_norm_backward(long n, int D, const float *x, const float *weight, const float *mean, const float *rstd,
                         const float *g, float *gx, float *gw, float *gb) {
    for (long r = 0; r < n; r++) {
        const float *xr = x + r * D, *gr = g + r * D;
        float *gxr = gx + r * D;
        const float m = mean[r], s = rstd[r];
        float a = 0.0f, b = 0.0f;
        for (int d = 0; d < D; d++) {
            const float xh = (xr[d] - m) * s, gwd = gr[d] * weight[d];
            a += gwd;
            b += gwd * xh;
            gw[d] += gr[d] * xh;
            gb[d] += gr[d];
        }
        a /= D;
        b /= D;
        for (int d = 0; d < D; d++) {
            const float xh = (xr[d] - m) * s;
            gxr[d] = s * (gr[d] * weight[d] - a - xh * b);
        }
    }
}

/* y[r, :] = keep[r] ? x[r, :] : 0 for n rows of width D (a select, so inf or NaN in a dropped row
 * never reaches y); y may be x */
void keep_rows(long n, int D, const float *x, const unsigned char *keep, float *y) {
    for (long r = 0; r < n; r++) {
        const float *xr = x + r * D;
        float *yr = y + r * D;
        if (keep[r]) {
            if (yr != xr)
                for (int d = 0; d < D; d++) yr[d] = xr[d];
        } else {
            for (int d = 0; d < D; d++) yr[d] = 0.0f;
        }
    }
}
