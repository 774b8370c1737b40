"""Which files of which Debian packages are photos, their content classes and licences: the hand-made half of derive.py.

Kept apart from the extraction code so that a reviewer of the photo set reads one table.
"""

CLASSES = ("animal", "plant", "building", "landscape", "object", "food", "people")
CREDIT_COLUMNS = (
    "file",
    "class",
    "source_package",
    "source_path",
    "author",
    "licence",
    "source_url",
    "title",
    "notes",
)

# Debian packages and the versions this set was derived from (another version is used if
# apt has it, and recorded; the photo list below may then need a look).
PACKAGES = {
    "gcompris-qt-data": "3.1-2",
    "opencv-doc": "4.6.0+dfsg-12",
    "plasma-workspace-wallpapers": "4:5.27.5-2",
    "palapeli-data": "4:22.12.3-1",
}

# gcompris: resource folder (inside its .rcc bundles, under /gcompris/src/activities/) -> short
# name used in output file names, and the content class of its photos.
GCOMPRIS_FOLDERS = {
    "categorization/resource/images/fishes": ("fishes", "animal"),
    "categorization/resource/images/monuments": ("monuments", "building"),
    "categorization/resource/images/others": ("objects", "object"),
    "categorization/resource/images/tools": ("tools", "object"),
    "categorization/resource/images/renewable": ("renewable", "object"),
    "erase/resource": ("erase", "animal"),
    "explore_farm_animals/resource/animals": ("farm", "animal"),
    "explore_world_animals/resource/animals": ("wildlife", "animal"),
    "explore_monuments/resource/egypt": ("explore-egypt", "building"),
    "explore_monuments/resource/france": ("explore-france", "building"),
    "explore_monuments/resource/germany": ("explore-germany", "building"),
    "explore_monuments/resource/india": ("explore-india", "building"),
    "explore_monuments/resource/usa": ("explore-usa", "building"),
    "explore_monuments/resource/wonders": ("explore-wonders", "building"),
    "explore_world_music/resource/music": ("music", "people"),
    "details/resource/image": ("details", "building"),
    "louis-braille/resource": ("braille", "object"),
}
# Only these files of the folders that also hold non-photos (stems, without .webp).
GCOMPRIS_ONLY = {
    "details/resource/image": {
        "Chenonceau_background",
        "EgeskovSlotSpejling_background",
        "EilanDonanCastle_background",
        "FanoeWindmill_background",
        "GizahPyramids_background",
        "Louvre_2007_02_24_c_background",
        "NDP_background",
        "Nagoya_background",
        "Neuschwanstein_background",
        "OperaSidney_background",
        "TajMahal_background",
        "TourEiffel_background",
        "TowerBridgeLondon_background",
    },
    "louis-braille/resource": {"braille", "fireplace", "rnib", "statue", "teach", "workshop"},
}
# Per-file classes where the folder's class is wrong (folder short name, stem) -> class.
GCOMPRIS_CLASS = {
    **{("renewable", f"dam{i}"): "landscape" for i in range(1, 6)},
    ("renewable", "geothermal"): "landscape",
    **{("renewable", f"windmill{i}"): "building" for i in range(1, 16)},
    ("explore-usa", "canyondeChelly"): "landscape",
    ("explore-wonders", "greatWallofChina"): "landscape",
    ("monuments", "greatWall"): "landscape",
    ("music", "africa"): "object",
    ("music", "middleeast"): "object",
    ("braille", "fireplace"): "people",
    ("braille", "teach"): "people",
    ("braille", "rnib"): "building",
    ("braille", "statue"): "building",
}

OPENCV_DATA = "usr/share/doc/opencv-doc/examples/data"
OPENCV_LICENCE = "Apache-2.0 AND BSD-3-Clause"
# file -> (class, title, notes)
OPENCV_PHOTOS = {
    "aero3.jpg": ("landscape", "aerial view of a town", "stitching pair with aero1.jpg (left out)"),
    "aloeL.jpg": ("plant", "aloe plant", "Middlebury stereo pair (aloeR.jpg left out)"),
    "apple.jpg": ("food", "apple", ""),
    "baboon.jpg": ("animal", "mandrill", "the USC-SIPI test image"),
    "basketball1.png": ("people", "two people passing a ball", "gray; pair with basketball2.png (left out)"),
    "board.jpg": ("object", "circuit board", ""),
    "box_in_scene.png": ("object", "boxes in a cluttered scene", "gray; box.png (a crop of it) left out"),
    "building.jpg": ("building", "hotel building", ""),
    "butterfly.jpg": ("animal", "butterfly", ""),
    "chicky_512.png": ("animal", "dog", ""),
    "ela_original.jpg": ("object", "notebook with an elastic band", "ela_modified.jpg (a tampered copy) left out"),
    "fruits.jpg": ("food", "cut fruits", ""),
    "home.jpg": ("building", "palace with birds", ""),
    "leuvenA.jpg": ("building", "street in Leuven", "pair with leuvenB.jpg (left out)"),
    "orange.jpg": ("food", "orange", ""),
    "rubberwhale1.png": ("object", "toys and fabric", "Middlebury optical-flow pair (rubberwhale2.png left out)"),
    "smarties.png": ("food", "sweets on white", ""),
    "squirrel_cls.jpg": ("animal", "squirrel", ""),
    "stuff.jpg": ("object", "objects on a desk", ""),
    "sudoku.png": ("object", "printed sudoku", ""),
}

PLASMA_DIR = "usr/share/wallpapers"
# wallpaper folder -> class (the others are renders or drawings)
PLASMA_PHOTOS = {
    "BytheWater": "landscape",
    "ColdRipple": "landscape",
    "ColorfulCups": "object",
    "DarkestHour": "landscape",
    "EveningGlow": "landscape",
    "FallenLeaf": "plant",
    "Grey": "building",
    "Kite": "landscape",
    "OneStandsOut": "plant",
    "Path": "landscape",
    "summer_1am": "landscape",
}

PALAPELI_DIR = "usr/share/palapeli/collection"
PALAPELI_PHOTOS = {
    "castle-maintenon": "building",
    "cincinnati-bridge": "building",
    "citrus-fruits": "food",
    "european-honey-bee": "animal",
    "panther-chameleon-female": "animal",
}

LICENCE_NAMES = {
    "public domain": "Public-Domain",
    "cc0-1.0": "CC0-1.0",
    "cc0": "CC0-1.0",
    "cc-by-sa 4.0": "CC-BY-SA-4.0",
    "cc-by-sa-4.0": "CC-BY-SA-4.0",
    "cc-by-sa 3.0": "CC-BY-SA-3.0",
    "cc-by 2.0": "CC-BY-2.0",
    "cc-by-2.0": "CC-BY-2.0",
    "cc-by 3.0": "CC-BY-3.0",
    "cc-by-3.0": "CC-BY-3.0",
    "cc-by 4.0": "CC-BY-4.0",
    "cc-by-4.0": "CC-BY-4.0",
    "gplv3": "GPL-3.0",
    "gplv3 or later": "GPL-3.0-or-later",
    "lgplv3": "LGPL-3.0",
    "fdl": "GFDL",
    "gnu-fdl": "GFDL",
    "gpl": "GPL",
    "gplv2+": "GPL-2.0-or-later",
}
# Licences that allow redistributing a modified (resized) copy, with attribution.
REDISTRIBUTABLE = {
    "Public-Domain",
    "CC0-1.0",
    "CC-BY-2.0",
    "CC-BY-3.0",
    "CC-BY-4.0",
    "CC-BY-SA-3.0",
    "CC-BY-SA-4.0",
    "GPL-3.0",
    "GPL-3.0-or-later",
    "GPL",
    "GPL-2.0-or-later",
    "LGPL-3.0",
    "GFDL",
    OPENCV_LICENCE,
}
