// Device helpers shared by the kernels: element types, conversions, the mma.sync wrapper.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace radio::cuda {

// The 32-bit shared-window address of a shared-memory pointer (the operand of PTX shared::cta
// instructions: cp.async, ldmatrix, mbarrier, TMA).
__device__ __forceinline__ unsigned smem_addr(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

// Element type codes used across the pybind boundary (python/radio/ops.py _CUDA_DTYPE_CODE).
enum class DType : int { kHalf = 0, kBFloat16 = 1, kFloat = 2 };

// Quantizer codes of docs/format.md (python/radio/format.py QUANTIZERS).
enum class Quant : int { kLaplace = 0, kUniform = 1 };

// The 16-bit type the tensor cores multiply for an activation type: f16 for f16 and f32
// activations (f32 x * f16 scale rounds to f16), bf16 for bf16 activations.
template <typename Act> struct MmaTypeOf { using type = __half; };
template <> struct MmaTypeOf<__nv_bfloat16> { using type = __nv_bfloat16; };

__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_float(float v) { return v; }

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ __half from_float<__half>(float v) {
  return __float2half_rn(v);
}
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }

// 16-bit pattern of a float rounded to the mma type.
template <typename T> __device__ __forceinline__ std::uint16_t bits16(float v) {
  const T h = from_float<T>(v);
  return *reinterpret_cast<const std::uint16_t*>(&h);
}

// D += A * B for one m16n8k16 tile with f32 accumulators (PTX ISA "mma.sync.aligned.m16n8k16").
template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const std::uint32_t (&a)[4],
                                          std::uint32_t b0, std::uint32_t b1);

template <>
__device__ __forceinline__ void mma_16816<__half>(float (&d)[4], const std::uint32_t (&a)[4],
                                                  std::uint32_t b0, std::uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <>
__device__ __forceinline__ void mma_16816<__nv_bfloat16>(float (&d)[4],
                                                         const std::uint32_t (&a)[4],
                                                         std::uint32_t b0, std::uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Packed 16-bit pair subtraction a - b, in the mma type.
template <typename T>
__device__ __forceinline__ std::uint32_t sub2(std::uint32_t a, std::uint32_t b);
template <>
__device__ __forceinline__ std::uint32_t sub2<__half>(std::uint32_t a, std::uint32_t b) {
  __half2 r = __hsub2(*reinterpret_cast<__half2*>(&a), *reinterpret_cast<__half2*>(&b));
  return *reinterpret_cast<std::uint32_t*>(&r);
}
template <>
__device__ __forceinline__ std::uint32_t sub2<__nv_bfloat16>(std::uint32_t a, std::uint32_t b) {
  __nv_bfloat162 r =
      __hsub2(*reinterpret_cast<__nv_bfloat162*>(&a), *reinterpret_cast<__nv_bfloat162*>(&b));
  return *reinterpret_cast<std::uint32_t*>(&r);
}

}  // namespace radio::cuda
