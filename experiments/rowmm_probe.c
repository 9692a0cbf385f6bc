// Hand-written AVX-512 float32 products of a few rows by a weight matrix read once
// (experiments/bench_rowmm_c.py): y[M, N] = x[M, K] @ W[K, N], W row-major, M <= 8.
// Each OpenMP thread takes one contiguous band of W's rows and reads it alone.
//   acc:   four W rows per pass, partial sums of all N columns kept in L1 (W streamed in
//          order, no strides);
//   panel: M = 4 only; 4 rows x 64 columns of sums held in 16 registers down the band
//          (W read in 256-byte pieces, one per row, prefetched 16 rows ahead).
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <string.h>

#define MAXM 8
#define MAXN 4096

static void band_acc(const float *x, const float *w, float *acc, int M, int K, int N, int k0,
                     int k1) {
  memset(acc, 0, sizeof(float) * M * N);
  int k = k0;
  for (; k + 4 <= k1; k += 4) {
    const float *r0 = w + (size_t)k * N, *r1 = r0 + N, *r2 = r1 + N, *r3 = r2 + N;
    __m512 xs[MAXM][4];
    for (int m = 0; m < M; m++)
      for (int j = 0; j < 4; j++) xs[m][j] = _mm512_set1_ps(x[m * K + k + j]);
    for (int n = 0; n < N; n += 16) {
      __m512 w0 = _mm512_loadu_ps(r0 + n), w1 = _mm512_loadu_ps(r1 + n);
      __m512 w2 = _mm512_loadu_ps(r2 + n), w3 = _mm512_loadu_ps(r3 + n);
      for (int m = 0; m < M; m++) {
        float *a = acc + m * N + n;
        __m512 s = _mm512_loadu_ps(a);
        s = _mm512_fmadd_ps(xs[m][0], w0, s);
        s = _mm512_fmadd_ps(xs[m][1], w1, s);
        s = _mm512_fmadd_ps(xs[m][2], w2, s);
        s = _mm512_fmadd_ps(xs[m][3], w3, s);
        _mm512_storeu_ps(a, s);
      }
    }
  }
  for (; k < k1; k++) {
    const float *wr = w + (size_t)k * N;
    for (int m = 0; m < M; m++) {
      __m512 xv = _mm512_set1_ps(x[m * K + k]);
      for (int n = 0; n < N; n += 16) {
        float *a = acc + m * N + n;
        _mm512_storeu_ps(a, _mm512_fmadd_ps(xv, _mm512_loadu_ps(wr + n), _mm512_loadu_ps(a)));
      }
    }
  }
}

static void band_panel4(const float *x, const float *w, float *out, int K, int N, int k0,
                        int k1) {
  for (int n = 0; n < N; n += 64) {
    __m512 a[4][4];
    for (int m = 0; m < 4; m++)
      for (int j = 0; j < 4; j++) a[m][j] = _mm512_setzero_ps();
    for (int k = k0; k < k1; k++) {
      const float *wr = w + (size_t)k * N + n;
      _mm_prefetch((const char *)(wr + 16 * N), _MM_HINT_T0);
      _mm_prefetch((const char *)(wr + 16 * N + 32), _MM_HINT_T0);
      __m512 w0 = _mm512_loadu_ps(wr), w1 = _mm512_loadu_ps(wr + 16);
      __m512 w2 = _mm512_loadu_ps(wr + 32), w3 = _mm512_loadu_ps(wr + 48);
      for (int m = 0; m < 4; m++) {
        __m512 xv = _mm512_set1_ps(x[m * K + k]);
        a[m][0] = _mm512_fmadd_ps(xv, w0, a[m][0]);
        a[m][1] = _mm512_fmadd_ps(xv, w1, a[m][1]);
        a[m][2] = _mm512_fmadd_ps(xv, w2, a[m][2]);
        a[m][3] = _mm512_fmadd_ps(xv, w3, a[m][3]);
      }
    }
    for (int m = 0; m < 4; m++)
      for (int j = 0; j < 4; j++) _mm512_storeu_ps(out + m * N + n + 16 * j, a[m][j]);
  }
}

// kernel 0: acc, 1: panel (M = 4, N a multiple of 64). N a multiple of 16, N <= MAXN.
// One band of W's rows per OpenMP thread (OMP_NUM_THREADS, default every core), then the
// bands' partial sums are added.
#define MAXT 64
static void rowmm(const float *x, const float *w, float *y, int M, int K, int N, int kernel) {
  static float part[MAXT][MAXM * MAXN] __attribute__((aligned(64)));
  int used = 1;
#pragma omp parallel
  {
    int nt = omp_get_num_threads() < MAXT ? omp_get_num_threads() : MAXT;
    int t = omp_get_thread_num();
    if (t == 0) used = nt;
    if (t < nt) {
      int k0 = (int)((long)K * t / nt), k1 = (int)((long)K * (t + 1) / nt);
      if (kernel == 1)
        band_panel4(x, w, part[t], K, N, k0, k1);
      else
        band_acc(x, w, part[t], M, K, N, k0, k1);
    }
  }
  for (int i = 0; i < M * N; i++) {
    float s = 0.0f;
    for (int t = 0; t < used; t++) s += part[t][i];
    y[i] = s;
  }
}

// bench_gemm's cold chain: for each layer x = tanh(x @ W1[l]) @ W2[l] (D -> F -> D).
int chain(float *x, const float **w1, const float **w2, int layers, int M, int D, int F,
          int kernel) {
  static float h[MAXM * MAXN], o[MAXM * MAXN];
  if (M < 1 || M > MAXM || D % 64 || F % 64 || D > MAXN || F > MAXN) return 1;
  if (kernel == 1 && M != 4) return 1;
  for (int l = 0; l < layers; l++) {
    rowmm(x, w1[l], h, M, D, F, kernel);
    for (int i = 0; i < M * F; i++) h[i] = tanhf(h[i]);
    rowmm(h, w2[l], o, M, F, D, kernel);
    memcpy(x, o, sizeof(float) * M * D);
  }
  return 0;
}
