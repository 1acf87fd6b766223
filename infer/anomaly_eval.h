/*
 * The parts of anomaly detection that know nothing of files or models, so
 * they can be tested on their own: smoothing an anomaly map, the feature
 * distance map, reducing a map to an image score, an image's complexity, its
 * distance to the nearest normal images, and the evaluation measures of
 * MVTec AD (Bergmann et al., "The MVTec Anomaly Detection Dataset", IJCV
 * 2021): AUROC of image scores or of pixels, and PRO, the per-region overlap.
 *
 * Labels and masks are 0 (normal) or 1 (anomalous); anomalous is the
 * positive class, and a higher score means more anomalous.
 */
#ifndef DC_INFER_ANOMALY_EVAL_H
#define DC_INFER_ANOMALY_EVAL_H

#include <stdint.h>

/* Gaussian smoothing of an h x w map in place: separable, the kernel
 * truncated at radius ceil(4 sigma) and normalised, borders mirrored as
 * scipy.ndimage.gaussian_filter's mode "reflect" does (d c b a | a b c d).
 * sigma 0 leaves the map as it is. */
int dc_gaussian_blur(float *map, int h, int w, double sigma);

/* The image score of an anomaly map of n pixels: the mean of its k largest
 * values (k = 1: the maximum; k is capped at n). NaN when out of memory. */
double dc_topk_mean(const float *map, int64_t n, int64_t k);

/* Add weight * (1 - cosine similarity) of two feature maps fx and fy
 * [hl, wl, c] (one image's) to an h x w map: pixel (y, x) takes location
 * (y hl / h, x wl / w), the location that covers it. A location where
 * either vector is zero adds nothing. */
void dc_feature_distance_add(float *map, int h, int w, const float *fx, const float *fy, int hl, int wl, int c,
                             double weight);

/* The area under the ROC curve: the probability that a random anomalous
 * item scores higher than a random normal one, ties counting one half
 * (Mann-Whitney U from mid-ranks). NaN when either class is empty; -1 with
 * dc_fail when out of memory. */
double dc_auroc(const float *scores, const uint8_t *labels, int64_t n);

/* PRO: the ground truth's regions are the 8-connected components of each
 * image's mask. At a threshold t, a pixel is called anomalous when its
 * score is >= t; PRO(t) is the mean over all regions of the fraction of the
 * region called anomalous, and FPR(t) the fraction of normal pixels called
 * anomalous. The curve runs over every distinct score, from (0, 0); its
 * area up to FPR max_fpr (MVTec AD: 0.3; interpolated linearly at that
 * point) is divided by max_fpr, so 1 is perfect. maps and masks are
 * [n_images, h, w]. NaN when there are no regions or no normal pixels; -1
 * with dc_fail when out of memory. */
double dc_pro_auc(const float *maps, const uint8_t *masks, int64_t n_images, int h, int w, double max_fpr);

/* The complexity of an image (Serra et al., "Input complexity and
 * out-of-distribution detection with likelihood-based generative models",
 * ICLR 2020): the zlib-compressed length (level 9) of its n values in
 * [-1, 1] quantised to 8 bits, in bits per value. Likelihood-like scores
 * rank simple images as more normal; subtracting this corrects for it.
 * NaN when out of memory. */
double dc_complexity_bits(const float *px, int64_t n);

/* The most neighbours dc_knn_distance averages over. */
#define DC_KNN_MAX_K 256

/* The mean Euclidean distance from the image x [per] to its k nearest images
 * of the bank [n, per] (k in 1 .. DC_KNN_MAX_K, capped at n): the one-class
 * nearest-neighbour score in pixel space. The squared distances are summed
 * in a fixed order, so the result does not depend on the thread count.
 * NaN when n is below 1 or k is outside 1 .. DC_KNN_MAX_K. */
double dc_knn_distance(const float *bank, int64_t n, const float *x, int64_t per, int k);

#endif
