//! Ground truth of the pointing game: PASCAL VOC (XML boxes) and COCO (JSON polygons and
//! run-length masks), read as TorchRay's benchmark reads them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// TorchRay's VOC classes, in its order.
pub const VOC_CLASSES: [&str; 20] = [
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
];

/// The layout of a dataset directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Format {
    /// PASCAL VOC: `Annotations/NAME.xml`, `JPEGImages/NAME.jpg`, and the image list
    /// `ImageSets/Main/SUBSET.txt` (default subset `test`; without the list, every annotation).
    Voc,
    /// COCO: `annotations/instances_SUBSET.json` and the images in `SUBSET/` (default subset
    /// `val2014`).
    Coco,
}

impl std::str::FromStr for Format {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "voc" => Ok(Format::Voc),
            "coco" => Ok(Format::Coco),
            other => Err(Error::Invalid(format!(
                "unknown dataset format `{other}`; use voc or coco"
            ))),
        }
    }
}

impl Format {
    /// TorchRay's benchmark areas of extremal perturbation on this dataset's images.
    pub fn benchmark_areas(&self) -> Vec<f64> {
        match self {
            Format::Voc => vec![0.025, 0.05, 0.1, 0.2],
            Format::Coco => vec![0.018, 0.025, 0.05, 0.1],
        }
    }

    /// `voc` or `coco`.
    pub fn name(&self) -> &'static str {
        match self {
            Format::Voc => "voc",
            Format::Coco => "coco",
        }
    }

    /// The subset read when none is named.
    pub fn default_subset(&self) -> &'static str {
        match self {
            Format::Voc => "test",
            Format::Coco => "val2014",
        }
    }
}

/// Where an object is.
#[derive(Debug, Clone, PartialEq)]
pub enum Region {
    /// A box, 0-based inclusive pixel bounds `(xmin, ymin, xmax, ymax)` (VOC's 1-based
    /// coordinates minus one, as TorchRay).
    Box(i64, i64, i64, i64),
    /// COCO polygons `[x0, y0, x1, y1, …]`: the pixels whose centres lie inside.
    Polygons(Vec<Vec<f64>>),
    /// A COCO run-length mask: alternating runs of 0s and 1s, column-major.
    RunLength(Vec<u32>),
}

/// One annotated object.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    /// Class index in the dataset's class list.
    pub class: usize,
    /// PASCAL's `difficult` flag (always false for COCO).
    pub difficult: bool,
    /// Its region.
    pub region: Region,
}

/// One image and its objects.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// The image's name without extension (VOC `000001`, COCO `COCO_val2014_000000262148`):
    /// the key of its records and of the difficult-subset flags.
    pub name: String,
    /// The image file.
    pub path: PathBuf,
    /// Width and height in pixels.
    pub size: (usize, usize),
    /// Its objects.
    pub objects: Vec<Object>,
}

impl Item {
    /// The classes present, ascending.
    pub fn classes(&self) -> Vec<usize> {
        let mut c: Vec<usize> = self.objects.iter().map(|o| o.class).collect();
        c.sort_unstable();
        c.dedup();
        c
    }

    /// Whether every object of `class` is PASCAL-difficult (TorchRay skips such pairs).
    pub fn all_difficult(&self, class: usize) -> bool {
        self.objects.iter().filter(|o| o.class == class).all(|o| o.difficult)
    }

    /// The ground truth of `class`: the union of its regions, `H × W` row-major.
    pub fn truth(&self, class: usize) -> Vec<bool> {
        let (w, h) = self.size;
        let mut m = vec![false; w * h];
        for o in self.objects.iter().filter(|o| o.class == class) {
            match &o.region {
                Region::Box(x0, y0, x1, y1) => {
                    // Python slicing: negative starts count from the end, bounds clip.
                    let clip = |a: i64, n: usize| -> usize {
                        let a = if a < 0 { a + n as i64 } else { a };
                        a.clamp(0, n as i64) as usize
                    };
                    let (ys, ye) = (clip(*y0, h), clip(y1.saturating_add(1), h));
                    let (xs, xe) = (clip(*x0, w), clip(x1.saturating_add(1), w));
                    for y in ys..ye {
                        m[y * w + xs..y * w + xe.max(xs)].iter_mut().for_each(|v| *v = true);
                    }
                }
                Region::Polygons(polys) => {
                    for poly in polys {
                        fill_polygon(poly, w, h, &mut m);
                    }
                }
                Region::RunLength(counts) => {
                    let (mut at, mut on) = (0usize, false);
                    for &c in counts {
                        if on {
                            for i in at..(at + c as usize).min(w * h) {
                                // Column-major: i = x·h + y.
                                m[(i % h) * w + i / h] = true;
                            }
                        }
                        at += c as usize;
                        on = !on;
                    }
                }
            }
        }
        m
    }
}

/// Sets the pixels of `m` whose centres lie inside `poly` (even–odd rule).
fn fill_polygon(poly: &[f64], w: usize, h: usize, m: &mut [bool]) {
    let pts: Vec<(f64, f64)> = poly.chunks_exact(2).map(|p| (p[0], p[1])).collect();
    if pts.len() < 3 {
        return;
    }
    for y in 0..h {
        let cy = y as f64 + 0.5;
        let mut xs = Vec::new();
        for i in 0..pts.len() {
            let (a, b) = (pts[i], pts[(i + 1) % pts.len()]);
            if (a.1 <= cy) != (b.1 <= cy) {
                xs.push(a.0 + (cy - a.1) / (b.1 - a.1) * (b.0 - a.0));
            }
        }
        xs.sort_by(f64::total_cmp);
        for pair in xs.chunks_exact(2) {
            // Centres x + 0.5 in [pair[0], pair[1]).
            let start = (pair[0] - 0.5).ceil().max(0.0) as usize;
            let end = ((pair[1] - 0.5).ceil().max(0.0) as usize).min(w);
            for x in start..end {
                m[y * w + x] = true;
            }
        }
    }
}

/// A dataset: its classes and its images.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Its format.
    pub format: Format,
    /// Class names, by index.
    pub classes: Vec<String>,
    /// Images, in the dataset's order (VOC: the image list; COCO: by image id).
    pub items: Vec<Item>,
}

impl Dataset {
    /// Reads the dataset at `dir` (see [`Format`] for the layouts).
    pub fn load(dir: &Path, format: Format, subset: Option<&str>) -> Result<Self> {
        let subset = subset.unwrap_or(format.default_subset());
        if !dir.is_dir() {
            return Err(Error::Dataset {
                path: dir.display().to_string(),
                message: "not a directory".into(),
            });
        }
        match format {
            Format::Voc => load_voc(dir, subset),
            Format::Coco => load_coco(dir, subset),
        }
    }
}

/// The largest image side and pixel count an annotation may declare (its ground truth is
/// drawn at that size).
const MAX_SIDE: f64 = 65536.0;
const MAX_PIXELS: f64 = (1u64 << 28) as f64;

/// A declared image size, checked: `(width, height)`.
fn image_size(w: f64, h: f64) -> std::result::Result<(usize, usize), String> {
    let side = |v: f64| v.is_finite() && (1.0..=MAX_SIDE).contains(&v);
    if !(side(w) && side(h) && w * h <= MAX_PIXELS) {
        return Err(format!(
            "image size {w}x{h} is not a plausible image size (1 to {MAX_SIDE} per side, {MAX_PIXELS} pixels)"
        ));
    }
    Ok((w as usize, h as usize))
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::Dataset {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

fn load_voc(dir: &Path, subset: &str) -> Result<Dataset> {
    let list = dir.join("ImageSets").join("Main").join(format!("{subset}.txt"));
    let names: Vec<String> = if list.exists() {
        read(&list)?.split_whitespace().map(str::to_string).collect()
    } else {
        let ann = dir.join("Annotations");
        let mut v: Vec<String> = std::fs::read_dir(&ann)
            .map_err(|e| Error::Dataset {
                path: ann.display().to_string(),
                message: format!("{e} (a VOC directory holds Annotations/ and JPEGImages/)"),
            })?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".xml"))
                    .map(str::to_string)
            })
            .collect();
        v.sort();
        v
    };
    let items = names
        .iter()
        .map(|name| voc_item(dir, name))
        .collect::<Result<Vec<_>>>()?;
    Ok(Dataset {
        format: Format::Voc,
        classes: VOC_CLASSES.iter().map(|s| s.to_string()).collect(),
        items,
    })
}

fn voc_item(dir: &Path, name: &str) -> Result<Item> {
    let path = dir.join("Annotations").join(format!("{name}.xml"));
    let text = read(&path)?;
    let bad = |message: String| Error::Dataset {
        path: path.display().to_string(),
        message,
    };
    let doc = roxmltree::Document::parse(&text).map_err(|e| bad(e.to_string()))?;
    let root = doc.root_element();
    let child = |n: roxmltree::Node, tag: &str| -> Option<String> {
        n.children()
            .find(|c| c.has_tag_name(tag))
            .and_then(|c| c.text())
            .map(|t| t.trim().to_string())
    };
    let number = |n: roxmltree::Node, tag: &str| -> Result<f64> {
        child(n, tag)
            .and_then(|t| t.parse::<f64>().ok())
            .ok_or_else(|| bad(format!("missing or non-numeric <{tag}>")))
    };
    let size = root
        .children()
        .find(|c| c.has_tag_name("size"))
        .ok_or_else(|| bad("no <size>".into()))?;
    let (w, h) = image_size(number(size, "width")?, number(size, "height")?).map_err(bad)?;
    let mut objects = Vec::new();
    for o in root.children().filter(|c| c.has_tag_name("object")) {
        let cls = child(o, "name").ok_or_else(|| bad("an <object> without <name>".into()))?;
        let class = VOC_CLASSES
            .iter()
            .position(|c| *c == cls)
            .ok_or_else(|| bad(format!("unknown VOC class `{cls}`")))?;
        let difficult = child(o, "difficult").is_some_and(|d| d == "1");
        let b = o
            .children()
            .find(|c| c.has_tag_name("bndbox"))
            .ok_or_else(|| bad("an <object> without <bndbox>".into()))?;
        // TorchRay: int(coordinate) − 1 (held to ±2^40: any box beyond the image is clipped).
        let c = |tag: &str| -> Result<i64> {
            let v = number(b, tag)?;
            if v.is_nan() {
                return Err(bad(format!("<{tag}> is not a number")));
            }
            Ok(v.clamp(-(2f64.powi(40)), 2f64.powi(40)).trunc() as i64 - 1)
        };
        objects.push(Object {
            class,
            difficult,
            region: Region::Box(c("xmin")?, c("ymin")?, c("xmax")?, c("ymax")?),
        });
    }
    let file = child(root, "filename").unwrap_or_else(|| format!("{name}.jpg"));
    Ok(Item {
        name: name.to_string(),
        path: dir.join("JPEGImages").join(file),
        size: (w, h),
        objects,
    })
}

fn load_coco(dir: &Path, subset: &str) -> Result<Dataset> {
    let path = dir.join("annotations").join(format!("instances_{subset}.json"));
    let bad = |message: String| Error::Dataset {
        path: path.display().to_string(),
        message,
    };
    let v: serde_json::Value = serde_json::from_str(&read(&path)?).map_err(|e| bad(e.to_string()))?;
    let arr = |key: &str| -> Result<&Vec<serde_json::Value>> {
        v.get(key)
            .and_then(|a| a.as_array())
            .ok_or_else(|| bad(format!("no `{key}` array")))
    };
    let int = |o: &serde_json::Value, key: &str| -> Result<u64> {
        o.get(key)
            .and_then(|x| x.as_u64())
            .ok_or_else(|| bad(format!("an entry without integer `{key}`")))
    };
    // Classes: the categories sorted by id (TorchRay's index of a category id).
    let mut cats: Vec<(u64, String)> = arr("categories")?
        .iter()
        .map(|c| {
            Ok((
                int(c, "id")?,
                c.get("name").and_then(|n| n.as_str()).unwrap_or("").to_string(),
            ))
        })
        .collect::<Result<_>>()?;
    cats.sort();
    let class_of: HashMap<u64, usize> = cats.iter().enumerate().map(|(i, (id, _))| (*id, i)).collect();
    let mut images: Vec<(u64, Item)> = Vec::new();
    let mut index: HashMap<u64, usize> = HashMap::new();
    let mut sorted: Vec<&serde_json::Value> = arr("images")?.iter().collect();
    sorted.sort_by_key(|i| i.get("id").and_then(|x| x.as_u64()));
    for im in sorted {
        let id = int(im, "id")?;
        let file = im
            .get("file_name")
            .and_then(|f| f.as_str())
            .ok_or_else(|| bad("an image without `file_name`".into()))?;
        let name = file.rsplit_once('.').map_or(file, |(n, _)| n).to_string();
        index.insert(id, images.len());
        images.push((
            id,
            Item {
                name,
                path: dir.join(subset).join(file),
                size: image_size(int(im, "width")? as f64, int(im, "height")? as f64).map_err(bad)?,
                objects: Vec::new(),
            },
        ));
    }
    for a in arr("annotations")? {
        let image = *index
            .get(&int(a, "image_id")?)
            .ok_or_else(|| bad("an annotation of an unknown image".into()))?;
        let cat = int(a, "category_id")?;
        let class = *class_of
            .get(&cat)
            .ok_or_else(|| bad(format!("an annotation of unknown category {cat}")))?;
        let (w, h) = images[image].1.size;
        let region = coco_region(a.get("segmentation"), (w, h)).map_err(bad)?;
        images[image].1.objects.push(Object {
            class,
            difficult: false,
            region,
        });
    }
    Ok(Dataset {
        format: Format::Coco,
        classes: cats.into_iter().map(|(_, n)| n).collect(),
        // TorchRay's COCO benchmark keeps the images that have annotations.
        items: images
            .into_iter()
            .map(|(_, i)| i)
            .filter(|i| !i.objects.is_empty())
            .collect(),
    })
}

fn coco_region(seg: Option<&serde_json::Value>, (w, h): (usize, usize)) -> std::result::Result<Region, String> {
    match seg {
        Some(serde_json::Value::Array(polys)) => Ok(Region::Polygons(
            polys
                .iter()
                .map(|p| {
                    p.as_array()
                        .map(|xs| xs.iter().filter_map(|x| x.as_f64()).collect())
                        .ok_or_else(|| "a polygon that is not a list of numbers".to_string())
                })
                .collect::<std::result::Result<_, _>>()?,
        )),
        Some(serde_json::Value::Object(rle)) => {
            let size: Vec<usize> = rle
                .get("size")
                .and_then(|s| s.as_array())
                .map(|s| s.iter().filter_map(|x| x.as_u64().map(|x| x as usize)).collect())
                .unwrap_or_default();
            if size != [h, w] {
                return Err(format!("a run-length mask of size {size:?} on a {h}×{w} image"));
            }
            let counts = match rle.get("counts") {
                Some(serde_json::Value::Array(c)) => c.iter().filter_map(|x| x.as_u64().map(|x| x as u32)).collect(),
                Some(serde_json::Value::String(s)) => decode_rle_string(s)?,
                _ => return Err("a run-length mask without `counts`".into()),
            };
            Ok(Region::RunLength(counts))
        }
        _ => Err("an annotation without a `segmentation`".into()),
    }
}

/// COCO's compressed run-length string (pycocotools' `rleFrString`).
pub fn decode_rle_string(s: &str) -> std::result::Result<Vec<u32>, String> {
    let bytes = s.as_bytes();
    let mut counts: Vec<i64> = Vec::new();
    let mut p = 0;
    while p < bytes.len() {
        let (mut x, mut k, mut more) = (0i64, 0, true);
        while more {
            if k >= 12 {
                return Err("a run-length value longer than 60 bits".into());
            }
            let c = *bytes.get(p).ok_or("a truncated run-length string")? as i64 - 48;
            x |= (c & 0x1f) << (5 * k);
            more = c & 0x20 != 0;
            p += 1;
            k += 1;
            if !more && (c & 0x10) != 0 {
                x |= -1 << (5 * k);
            }
        }
        if counts.len() > 2 {
            x = x
                .checked_add(counts[counts.len() - 2])
                .ok_or("a run in a run-length string overflows")?;
        }
        counts.push(x);
    }
    counts
        .into_iter()
        .map(|c| u32::try_from(c).map_err(|_| "a negative run in a run-length string".to_string()))
        .collect()
}

/// The "difficult" subset of the excitation-backprop benchmark: per image, one flag per class
/// (TorchRay's `pointing_game_ebp_*_difficult.txt`: the image name, then tab-separated 0/1).
/// Only flagged pairs are scored; images the file does not list are all scored.
#[derive(Debug, Clone, Default)]
pub struct DifficultFlags(HashMap<String, Vec<bool>>);

impl DifficultFlags {
    /// Reads a flag file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = read(path)?;
        let mut map = HashMap::new();
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let mut fields = line.split_whitespace();
            let name = fields.next().unwrap_or_default().to_string();
            let flags = fields
                .map(|f| match f {
                    "0" => Ok(false),
                    "1" => Ok(true),
                    other => Err(Error::Dataset {
                        path: path.display().to_string(),
                        message: format!("line {}: flag `{other}` is not 0 or 1", i + 1),
                    }),
                })
                .collect::<Result<Vec<_>>>()?;
            map.insert(name, flags);
        }
        Ok(Self(map))
    }

    /// Whether the pair is in the subset.
    pub fn scored(&self, image: &str, class: usize) -> bool {
        match self.0.get(image) {
            Some(flags) => flags.get(class).copied().unwrap_or(false),
            None => true,
        }
    }
}
