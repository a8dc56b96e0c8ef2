//! Raw V4L2 frames to I420: packed YUYV 4:2:2 (chroma averaged over each pair of rows),
//! single-plane NV12 (chroma de-interleaved) and YU12 (copied), each honouring the driver's
//! row stride (`bytesperline`). Bad geometry or a truncated frame is an error, never a panic:
//! the frame is dropped and counted.

use super::PixelFormat;
use crate::source::i420::deinterleave_uv;

/// Why a raw frame could not be converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    #[error("{width}x{height}: dimensions must be even and non-zero")]
    BadSize { width: usize, height: usize },
    #[error("row stride {stride} is too small for {width} pixels")]
    Stride { stride: usize, width: usize },
    #[error("frame has {have} bytes, {need} needed (truncated)")]
    ShortSource { have: usize, need: usize },
    #[error("destination planes are too small")]
    ShortDestination,
}

fn check_geometry(
    width: usize,
    height: usize,
    stride: usize,
    min_stride: usize,
    dst: &[&mut [u8]; 3],
) -> Result<(), ConvertError> {
    if width == 0 || height == 0 || width % 2 != 0 || height % 2 != 0 {
        return Err(ConvertError::BadSize { width, height });
    }
    if stride < min_stride {
        return Err(ConvertError::Stride { stride, width });
    }
    let chroma = (width / 2) * (height / 2);
    if dst[0].len() < width * height || dst[1].len() < chroma || dst[2].len() < chroma {
        return Err(ConvertError::ShortDestination);
    }
    Ok(())
}

fn ensure_len(src: &[u8], need: usize) -> Result<(), ConvertError> {
    if src.len() < need {
        Err(ConvertError::ShortSource {
            have: src.len(),
            need,
        })
    } else {
        Ok(())
    }
}

fn avg(a: u8, b: u8) -> u8 {
    ((u16::from(a) + u16::from(b) + 1) >> 1) as u8
}

/// Packed YUYV 4:2:2 (`Y0 U Y1 V` per pixel pair, rows `stride` bytes apart) to the three
/// planes of a contiguous I420 frame (strides `width`, `width / 2`, `width / 2`). Chroma is
/// the average of each pair of rows.
pub fn yuyv_to_i420(
    src: &[u8],
    stride: usize,
    width: usize,
    height: usize,
    dst: [&mut [u8]; 3],
) -> Result<(), ConvertError> {
    check_geometry(width, height, stride, 2 * width, &dst)?;
    ensure_len(src, stride * (height - 1) + 2 * width)?;
    let [y, u, v] = dst;
    let cw = width / 2;
    for row in 0..height / 2 {
        let top = &src[2 * row * stride..][..2 * width];
        let bottom = &src[(2 * row + 1) * stride..][..2 * width];
        let (y_top, y_bottom) = y[2 * row * width..][..2 * width].split_at_mut(width);
        let u_row = &mut u[row * cw..][..cw];
        let v_row = &mut v[row * cw..][..cw];
        let pairs = top
            .chunks_exact(4)
            .zip(bottom.chunks_exact(4))
            .zip(y_top.chunks_exact_mut(2).zip(y_bottom.chunks_exact_mut(2)))
            .zip(u_row.iter_mut().zip(v_row.iter_mut()));
        for (((t, b), (yt, yb)), (uo, vo)) in pairs {
            yt[0] = t[0];
            yt[1] = t[2];
            yb[0] = b[0];
            yb[1] = b[2];
            *uo = avg(t[1], b[1]);
            *vo = avg(t[3], b[3]);
        }
    }
    Ok(())
}

/// Single-plane NV12 (a Y plane of `height` rows `stride` bytes apart, then the interleaved
/// U/V plane with the same stride) to contiguous I420 planes.
pub fn nv12_to_i420(
    src: &[u8],
    stride: usize,
    width: usize,
    height: usize,
    dst: [&mut [u8]; 3],
) -> Result<(), ConvertError> {
    check_geometry(width, height, stride, width, &dst)?;
    let uv_at = stride * height;
    ensure_len(src, uv_at + stride * (height / 2 - 1) + width)?;
    let [y, u, v] = dst;
    copy_plane(src, stride, y, width, height);
    deinterleave_uv(&src[uv_at..], stride, (width / 2, height / 2), u, v);
    Ok(())
}

/// Single-plane YU12 (I420 with rows `stride` bytes apart for Y and `stride / 2` for U and V,
/// as V4L2 lays it out) to contiguous I420 planes.
pub fn yu12_to_i420(
    src: &[u8],
    stride: usize,
    width: usize,
    height: usize,
    dst: [&mut [u8]; 3],
) -> Result<(), ConvertError> {
    check_geometry(width, height, stride, width, &dst)?;
    let cs = stride / 2;
    let (cw, ch) = (width / 2, height / 2);
    let u_at = stride * height;
    let v_at = u_at + cs * ch;
    ensure_len(src, v_at + cs * (ch - 1) + cw)?;
    let [y, u, v] = dst;
    copy_plane(src, stride, y, width, height);
    copy_plane(&src[u_at..], cs, u, cw, ch);
    copy_plane(&src[v_at..], cs, v, cw, ch);
    Ok(())
}

/// Copies `rows` rows of `width` bytes from `src` (rows `stride` apart) into packed `dst`.
/// The caller has checked the lengths.
fn copy_plane(src: &[u8], stride: usize, dst: &mut [u8], width: usize, rows: usize) {
    if stride == width {
        dst[..width * rows].copy_from_slice(&src[..width * rows]);
        return;
    }
    for (row, out) in dst[..width * rows].chunks_exact_mut(width).enumerate() {
        out.copy_from_slice(&src[row * stride..][..width]);
    }
}

/// Converts one raw frame of `format` into the planes of an I420 frame.
pub(super) fn convert(
    format: PixelFormat,
    src: &[u8],
    stride: usize,
    width: usize,
    height: usize,
    dst: [&mut [u8]; 3],
) -> Result<(), ConvertError> {
    match format {
        PixelFormat::Yuyv => yuyv_to_i420(src, stride, width, height, dst),
        PixelFormat::Nv12 => nv12_to_i420(src, stride, width, height, dst),
        PixelFormat::I420 => yu12_to_i420(src, stride, width, height, dst),
        PixelFormat::Mjpeg => Err(ConvertError::BadSize { width, height }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::i420::BufferPool;

    type Conv = fn(&[u8], usize, usize, usize, [&mut [u8]; 3]) -> Result<(), ConvertError>;
    type Planes = (Vec<u8>, Vec<u8>, Vec<u8>);

    /// Runs a conversion into fresh planes.
    fn run_convert(
        f: Conv,
        src: &[u8],
        stride: usize,
        w: usize,
        h: usize,
    ) -> Result<Planes, ConvertError> {
        let (mut y, mut u, mut v) = (
            vec![0xEE; w * h],
            vec![0xEE; w * h / 4],
            vec![0xEE; w * h / 4],
        );
        f(src, stride, w, h, [&mut y, &mut u, &mut v])?;
        Ok((y, u, v))
    }

    #[test]
    fn yuyv_to_i420_with_and_without_padding() {
        // 4x2: row 0 = Y 10 11 12 13, U 100/102, V 200/202; row 1 = Y 20..23, U 110/112,
        // V 210/213.
        let row0 = [10, 100, 11, 200, 12, 102, 13, 202];
        let row1 = [20, 110, 21, 210, 22, 112, 23, 213];
        let want_y = vec![10, 11, 12, 13, 20, 21, 22, 23];
        let want_u = vec![105, 107];
        let want_v = vec![205, 208]; // (202 + 213 + 1) / 2 rounds up

        let packed: Vec<u8> = row0.iter().chain(&row1).copied().collect();
        let (y, u, v) = run_convert(yuyv_to_i420, &packed, 8, 4, 2).unwrap();
        assert_eq!((y, u, v), (want_y.clone(), want_u.clone(), want_v.clone()));

        // Rows padded to 12 bytes, and the last row's padding missing (allowed).
        let mut padded = row0.to_vec();
        padded.extend_from_slice(&[0xAA; 4]);
        padded.extend_from_slice(&row1);
        let (y, u, v) = run_convert(yuyv_to_i420, &padded, 12, 4, 2).unwrap();
        assert_eq!((y, u, v), (want_y, want_u, want_v));

        // 2x4: two chroma rows.
        let src = [
            1, 50, 2, 60, //
            3, 52, 4, 62, //
            5, 70, 6, 80, //
            7, 72, 8, 82,
        ];
        let (y, u, v) = run_convert(yuyv_to_i420, &src, 4, 2, 4).unwrap();
        assert_eq!(y, vec![1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(u, vec![51, 71]);
        assert_eq!(v, vec![61, 81]);
    }

    #[test]
    fn nv12_to_i420_with_and_without_padding() {
        // 4x2: Y rows, then one UV row (U0 V0 U1 V1).
        let y_rows = [[1, 2, 3, 4], [5, 6, 7, 8]];
        let uv = [100, 200, 101, 201];
        let packed: Vec<u8> = y_rows.iter().flatten().chain(&uv).copied().collect();
        let (y, u, v) = run_convert(nv12_to_i420, &packed, 4, 4, 2).unwrap();
        assert_eq!(y, vec![1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!((u, v), (vec![100, 101], vec![200, 201]));

        // Stride 8: every row, the UV row too, is padded; the UV plane starts at 8 * 2.
        let mut padded = Vec::new();
        for row in y_rows {
            padded.extend_from_slice(&row);
            padded.extend_from_slice(&[0xAA; 4]);
        }
        padded.extend_from_slice(&uv);
        padded.extend_from_slice(&[0xBB; 4]);
        let (y, u, v) = run_convert(nv12_to_i420, &padded, 8, 4, 2).unwrap();
        assert_eq!(y, vec![1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!((u, v), (vec![100, 101], vec![200, 201]));
    }

    #[test]
    fn yu12_to_i420_with_padding() {
        // 4x2 with stride 6: Y rows of 6, then U and V rows of 3 (stride / 2).
        let mut src = Vec::new();
        src.extend_from_slice(&[1, 2, 3, 4, 0xAA, 0xAA, 5, 6, 7, 8, 0xAA, 0xAA]);
        src.extend_from_slice(&[100, 101, 0xAA]);
        src.extend_from_slice(&[200, 201]);
        let (y, u, v) = run_convert(yu12_to_i420, &src, 6, 4, 2).unwrap();
        assert_eq!(y, vec![1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!((u, v), (vec![100, 101], vec![200, 201]));
        // Unpadded: a straight copy.
        let src = [1, 2, 3, 4, 5, 6, 7, 8, 100, 101, 200, 201];
        let (y, u, v) = run_convert(yu12_to_i420, &src, 4, 4, 2).unwrap();
        assert_eq!(y, vec![1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!((u, v), (vec![100, 101], vec![200, 201]));
    }

    #[test]
    fn conversions_refuse_bad_input_without_panicking() {
        for f in [yuyv_to_i420 as Conv, nv12_to_i420, yu12_to_i420] {
            // Truncated frames.
            for len in [0, 1, 7, 11] {
                assert!(matches!(
                    run_convert(f, &vec![0; len], 8, 4, 2),
                    Err(ConvertError::ShortSource { .. })
                ));
            }
            // Odd or zero dimensions, strides narrower than a row.
            assert!(matches!(
                run_convert(f, &[0; 64], 8, 3, 2),
                Err(ConvertError::BadSize { .. })
            ));
            assert!(matches!(
                run_convert(f, &[0; 64], 8, 4, 0),
                Err(ConvertError::BadSize { .. })
            ));
            assert!(matches!(
                run_convert(f, &[0; 64], 2, 4, 2),
                Err(ConvertError::Stride { .. })
            ));
            // Destination planes too small.
            let (mut y, mut u, mut v) = (vec![0; 7], vec![0; 2], vec![0; 2]);
            assert_eq!(
                f(&[0; 64], 8, 4, 2, [&mut y, &mut u, &mut v]),
                Err(ConvertError::ShortDestination)
            );
        }
    }

    #[test]
    fn conversion_into_pooled_buffers() {
        let pool = BufferPool::new(4, 2);
        let mut buf = pool.take();
        let src = [
            10, 100, 11, 200, 12, 102, 13, 202, 20, 110, 21, 210, 22, 112, 23, 213,
        ];
        convert(PixelFormat::Yuyv, &src, 8, 4, 2, buf.planes_mut()).unwrap();
        use crate::frame::Yuv420Buffer;
        let [y, u, v] = buf.planes();
        assert_eq!(y, &[10, 11, 12, 13, 20, 21, 22, 23]);
        assert_eq!((u, v), (&[105u8, 107][..], &[205u8, 208][..]));
    }
}
