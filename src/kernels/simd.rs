//! Runtime choice of instruction set for the kernels' vectorisable loops.

/// Defines `$name`, which runs `$inner` (an `#[inline(always)]` function whose loops are written
/// for the compiler to vectorise) compiled for the best instruction set this CPU has: AVX-512,
/// AVX2+FMA, or the baseline. With `$inner::<FMA>`, `$inner` takes a `const FMA: bool`: true
/// where fused multiply-adds are available (see [`madd`]).
macro_rules! simd_dispatch {
    ($vis:vis $name:ident => $inner:ident ($($arg:ident : $ty:ty),* $(,)?)) => {
        simd_dispatch!(@dispatch $vis $name, [$inner], [$inner], $($arg: $ty),*);
    };
    ($vis:vis $name:ident => $inner:ident::<FMA> ($($arg:ident : $ty:ty),* $(,)?)) => {
        simd_dispatch!(@dispatch $vis $name, [$inner::<true>], [$inner::<false>], $($arg: $ty),*);
    };
    // `$fast` runs where AVX2 and FMA are enabled, `$base` on the baseline.
    (@dispatch $vis:vis $name:ident, [$($fast:tt)*], [$($base:tt)*], $($arg:ident : $ty:ty),*) => {
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn v4($($arg: $ty),*) {
                    $($fast)*($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn v3($($arg: $ty),*) {
                    $($fast)*($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU supports the enabled features (checked just above).
                    return unsafe { v4($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: as above.
                    return unsafe { v3($($arg),*) };
                }
            }
            $($base)*($($arg),*)
        }
    };
}

/// `a·b + c`, as one fused multiply-add where `FMA` says the instruction set has it (elsewhere
/// `mul_add` would be a slow library call).
#[inline(always)]
pub(super) fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}

/// Sum with several accumulators, so that it vectorises (a plain `iter().sum()` adds in order,
/// one value at a time).
#[inline(always)]
pub(super) fn sum(xs: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let chunks = xs.chunks_exact(16);
    let rest: f32 = chunks.remainder().iter().sum();
    for chunk in chunks {
        for (a, x) in acc.iter_mut().zip(chunk) {
            *a += x;
        }
    }
    acc.iter().sum::<f32>() + rest
}
