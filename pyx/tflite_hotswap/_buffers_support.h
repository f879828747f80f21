/* C helpers of the buffer kernels (_buffers.pyx): the SIMD body of the
 * byte-to-byte affine kernel (uint8/int8 source, int8/uint8 destination).
 *
 * hs_affine_bytes(src, n, dst, src_signed, dst_signed, a, bh, m, cycle) writes,
 * for the whole steps at the start of src (m' running from m, wrapping at
 * cycle; a and bh hold cycle + HS_STEP_MAX values, cycle a multiple of
 * HS_STEP_MAX),
 *
 *     w = float(src[i]) * a[m'] + bh[m']       (float32; bh = b + 0.5)
 *     dst[i] = saturate(trunc(w) - (w <= 0))    (uint8: saturate(trunc(w)))
 *
 * and returns how many elements it wrote: 0 where no SIMD is compiled in.
 *
 * With w = v + 0.5 that is the scalar kernel's v = x * a + b rounded half
 * away from zero -- trunc(v + 0.5) for v >= 0, trunc(v - 0.5) below -- and
 * saturated (for uint8 every w <= 0 saturates to 0 anyway).  Not always,
 * though: the sum is rounded once instead of twice, NaN and values out of
 * int32 range saturate differently, armv7 NEON flushes denormals.  So the
 * caller uses it only after running it on every (byte, coefficient) pair and
 * finding it equal to the scalar kernel's table -- each output depends on that
 * pair alone, so it is then exact on any data -- and otherwise uses the table.
 *
 * Portable: SSE2 (the x86-64 baseline), AVX2 or AVX-512F chosen at run time
 * on x86-64 (gcc/clang), NEON (aarch64; armv7 built with -mfpu=neon);
 * elsewhere nothing, and the caller's table does the work. */
#ifndef TFLITE_HOTSWAP_BUFFERS_SUPPORT_H
#define TFLITE_HOTSWAP_BUFFERS_SUPPORT_H

#include <stddef.h>
#include <stdint.h>

#define HS_STEP_MAX 64 /* elements per step of the widest variant (AVX-512) */

#if defined(__GNUC__)
#define HS_INLINE static inline __attribute__((always_inline))
#else
#define HS_INLINE static inline
#endif

/* Each body takes the signedness as constants: one loop per combination. */
#define HS_SPECIALISE(body)                                                                  \
    (src_signed ? (dst_signed ? body(1, 1) : body(1, 0)) : (dst_signed ? body(0, 1) : body(0, 0)))

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define HS_X86_DISPATCH 1
#include <immintrin.h>
#elif defined(__SSE2__)
#include <emmintrin.h>
#endif
#if defined(__ARM_NEON)
#include <arm_neon.h>
#endif

#if defined(__SSE2__)
HS_INLINE ptrdiff_t hs_sse2_body(const uint8_t *src, ptrdiff_t n, uint8_t *dst, const float *a,
                                 const float *bh, ptrdiff_t m, ptrdiff_t cycle,
                                 const int src_signed, const int dst_signed) {
    const __m128 zero = _mm_setzero_ps();
    ptrdiff_t i;
    int c;
    for (i = 0; i + 16 <= n; i += 16) {
        __m128i x = _mm_loadu_si128((const __m128i *)(src + i));
        __m128i w[2], d[4], q[4], lo, hi;
        /* bytes to 16-bit words: each byte duplicated, then shifted down */
        w[0] = _mm_unpacklo_epi8(x, x);
        w[1] = _mm_unpackhi_epi8(x, x);
        for (c = 0; c < 2; c++) {
            w[c] = src_signed ? _mm_srai_epi16(w[c], 8) : _mm_srli_epi16(w[c], 8);
            d[2 * c] = _mm_srai_epi32(_mm_unpacklo_epi16(w[c], w[c]), 16);
            d[2 * c + 1] = _mm_srai_epi32(_mm_unpackhi_epi16(w[c], w[c]), 16);
        }
        for (c = 0; c < 4; c++) {
            __m128 v = _mm_mul_ps(_mm_cvtepi32_ps(d[c]), _mm_loadu_ps(a + m + 4 * c));
            v = _mm_add_ps(v, _mm_loadu_ps(bh + m + 4 * c));
            q[c] = _mm_cvttps_epi32(v);
            if (dst_signed) q[c] = _mm_add_epi32(q[c], _mm_castps_si128(_mm_cmple_ps(v, zero)));
        }
        lo = _mm_packs_epi32(q[0], q[1]);
        hi = _mm_packs_epi32(q[2], q[3]);
        _mm_storeu_si128((__m128i *)(dst + i),
                         dst_signed ? _mm_packs_epi16(lo, hi) : _mm_packus_epi16(lo, hi));
        m += 16;
        if (m >= cycle) m -= cycle;
    }
    return i;
}

static ptrdiff_t hs_bytes_sse2(const uint8_t *src, ptrdiff_t n, uint8_t *dst, int src_signed,
                               int dst_signed, const float *a, const float *bh, ptrdiff_t m,
                               ptrdiff_t cycle) {
#define HS_BODY(s, d) hs_sse2_body(src, n, dst, a, bh, m, cycle, s, d)
    return HS_SPECIALISE(HS_BODY);
#undef HS_BODY
}
#endif

#if defined(HS_X86_DISPATCH)
#define HS_TARGET_AVX2 __attribute__((target("avx2")))
HS_TARGET_AVX2 HS_INLINE ptrdiff_t hs_avx2_body(const uint8_t *src, ptrdiff_t n, uint8_t *dst,
                                                const float *a, const float *bh, ptrdiff_t m,
                                                ptrdiff_t cycle, const int src_signed,
                                                const int dst_signed) {
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    const __m256 zero = _mm256_setzero_ps();
    ptrdiff_t i;
    int c;
    for (i = 0; i + 32 <= n; i += 32) {
        __m256i q[4], packed;
        for (c = 0; c < 4; c++) {
            __m128i x = _mm_loadl_epi64((const __m128i *)(src + i + 8 * c));
            __m256i d = src_signed ? _mm256_cvtepi8_epi32(x) : _mm256_cvtepu8_epi32(x);
            __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(d), _mm256_loadu_ps(a + m + 8 * c));
            v = _mm256_add_ps(v, _mm256_loadu_ps(bh + m + 8 * c));
            q[c] = _mm256_cvttps_epi32(v);
            if (dst_signed)
                q[c] = _mm256_add_epi32(q[c], _mm256_castps_si256(_mm256_cmp_ps(v, zero, _CMP_LE_OQ)));
        }
        /* The packs work within 128-bit lanes: put the 4-byte groups back in order. */
        q[0] = _mm256_packs_epi32(q[0], q[1]);
        q[2] = _mm256_packs_epi32(q[2], q[3]);
        packed = dst_signed ? _mm256_packs_epi16(q[0], q[2]) : _mm256_packus_epi16(q[0], q[2]);
        _mm256_storeu_si256((__m256i *)(dst + i), _mm256_permutevar8x32_epi32(packed, order));
        m += 32;
        if (m >= cycle) m -= cycle;
    }
    return i;
}

HS_TARGET_AVX2 static ptrdiff_t hs_bytes_avx2(const uint8_t *src, ptrdiff_t n, uint8_t *dst,
                                              int src_signed, int dst_signed, const float *a,
                                              const float *bh, ptrdiff_t m, ptrdiff_t cycle) {
#define HS_BODY(s, d) hs_avx2_body(src, n, dst, a, bh, m, cycle, s, d)
    return HS_SPECIALISE(HS_BODY);
#undef HS_BODY
}
#define HS_TARGET_AVX512 __attribute__((target("avx512f")))
HS_TARGET_AVX512 HS_INLINE ptrdiff_t hs_avx512_body(const uint8_t *src, ptrdiff_t n, uint8_t *dst,
                                                    const float *a, const float *bh, ptrdiff_t m,
                                                    ptrdiff_t cycle, const int src_signed,
                                                    const int dst_signed) {
    const __m512 zero = _mm512_setzero_ps();
    ptrdiff_t i;
    int c;
    for (i = 0; i + 64 <= n; i += 64) {
        for (c = 0; c < 4; c++) {
            __m128i x = _mm_loadu_si128((const __m128i *)(src + i + 16 * c));
            __m512i d = src_signed ? _mm512_cvtepi8_epi32(x) : _mm512_cvtepu8_epi32(x);
            __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(d), _mm512_loadu_ps(a + m + 16 * c));
            __m512i q;
            v = _mm512_add_ps(v, _mm512_loadu_ps(bh + m + 16 * c));
            q = _mm512_cvttps_epi32(v);
            if (dst_signed)
                q = _mm512_mask_sub_epi32(q, _mm512_cmp_ps_mask(v, zero, _CMP_LE_OQ), q,
                                          _mm512_set1_epi32(1));
            _mm_storeu_si128((__m128i *)(dst + i + 16 * c),
                             dst_signed ? _mm512_cvtsepi32_epi8(q)
                                        : _mm512_cvtusepi32_epi8(_mm512_max_epi32(q, _mm512_setzero_si512())));
        }
        m += 64;
        if (m >= cycle) m -= cycle;
    }
    return i;
}

HS_TARGET_AVX512 static ptrdiff_t hs_bytes_avx512(const uint8_t *src, ptrdiff_t n, uint8_t *dst,
                                                  int src_signed, int dst_signed, const float *a,
                                                  const float *bh, ptrdiff_t m, ptrdiff_t cycle) {
#define HS_BODY(s, d) hs_avx512_body(src, n, dst, a, bh, m, cycle, s, d)
    return HS_SPECIALISE(HS_BODY);
#undef HS_BODY
}
#endif

#if defined(__ARM_NEON)
HS_INLINE ptrdiff_t hs_neon_body(const uint8_t *src, ptrdiff_t n, uint8_t *dst, const float *a,
                                 const float *bh, ptrdiff_t m, ptrdiff_t cycle,
                                 const int src_signed, const int dst_signed) {
    const float32x4_t zero = vdupq_n_f32(0.0f);
    ptrdiff_t i;
    int c;
    for (i = 0; i + 16 <= n; i += 16) {
        int16x8_t w[2], lo, hi;
        int32x4_t d[4], q[4];
        if (src_signed) {
            int8x16_t x = vld1q_s8((const int8_t *)src + i);
            w[0] = vmovl_s8(vget_low_s8(x));
            w[1] = vmovl_s8(vget_high_s8(x));
        } else {
            uint8x16_t x = vld1q_u8(src + i);
            w[0] = vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(x)));
            w[1] = vreinterpretq_s16_u16(vmovl_u8(vget_high_u8(x)));
        }
        for (c = 0; c < 2; c++) {
            d[2 * c] = vmovl_s16(vget_low_s16(w[c]));
            d[2 * c + 1] = vmovl_s16(vget_high_s16(w[c]));
        }
        for (c = 0; c < 4; c++) {
            float32x4_t v = vmulq_f32(vcvtq_f32_s32(d[c]), vld1q_f32(a + m + 4 * c));
            v = vaddq_f32(v, vld1q_f32(bh + m + 4 * c));
            q[c] = vcvtq_s32_f32(v);
            if (dst_signed) q[c] = vaddq_s32(q[c], vreinterpretq_s32_u32(vcleq_f32(v, zero)));
        }
        lo = vcombine_s16(vqmovn_s32(q[0]), vqmovn_s32(q[1]));
        hi = vcombine_s16(vqmovn_s32(q[2]), vqmovn_s32(q[3]));
        if (dst_signed)
            vst1q_s8((int8_t *)dst + i, vcombine_s8(vqmovn_s16(lo), vqmovn_s16(hi)));
        else
            vst1q_u8(dst + i, vcombine_u8(vqmovun_s16(lo), vqmovun_s16(hi)));
        m += 16;
        if (m >= cycle) m -= cycle;
    }
    return i;
}

static ptrdiff_t hs_bytes_neon(const uint8_t *src, ptrdiff_t n, uint8_t *dst, int src_signed,
                               int dst_signed, const float *a, const float *bh, ptrdiff_t m,
                               ptrdiff_t cycle) {
#define HS_BODY(s, d) hs_neon_body(src, n, dst, a, bh, m, cycle, s, d)
    return HS_SPECIALISE(HS_BODY);
#undef HS_BODY
}
#endif

static inline ptrdiff_t hs_affine_bytes(const uint8_t *src, ptrdiff_t n, uint8_t *dst,
                                        int src_signed, int dst_signed, const float *a,
                                        const float *bh, ptrdiff_t m, ptrdiff_t cycle) {
#if defined(HS_X86_DISPATCH)
    if (__builtin_cpu_supports("avx512f"))
        return hs_bytes_avx512(src, n, dst, src_signed, dst_signed, a, bh, m, cycle);
    if (__builtin_cpu_supports("avx2"))
        return hs_bytes_avx2(src, n, dst, src_signed, dst_signed, a, bh, m, cycle);
#endif
#if defined(__SSE2__)
    return hs_bytes_sse2(src, n, dst, src_signed, dst_signed, a, bh, m, cycle);
#elif defined(__ARM_NEON)
    return hs_bytes_neon(src, n, dst, src_signed, dst_signed, a, bh, m, cycle);
#else
    (void)src, (void)n, (void)dst, (void)src_signed, (void)dst_signed;
    (void)a, (void)bh, (void)m, (void)cycle;
    return 0;
#endif
}

#endif
