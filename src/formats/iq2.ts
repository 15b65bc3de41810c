/**
 * llama.cpp's 2-bit lattice types IQ2_XXS (2.06 bits a weight), IQ2_XS (2.31) and IQ2_S (2.56), byte for
 * byte as ggml-quants.c writes them (quantize_iq2_xxs, quantize_iq2_xs, quantize_iq2_s) and reads them
 * (dequantize_row_iq2_xxs / _xs / _s). Sources read (public): ggml/src/ggml-quants.c (iq2xs_init_impl's
 * kgrid_2bit_256 / _512 / _1024, quantize_row_iq2_xxs_impl, quantize_row_iq2_xs_impl,
 * quantize_row_iq2_s_impl) and ggml-common.h (block_iq2_xxs, block_iq2_xs, block_iq2_s, iq2xxs_grid,
 * iq2xs_grid, iq2s_grid) of ggml-org/llama.cpp as node-llama-cpp 3.22.1 bundles it.
 *
 * IQ2_XXS and IQ2_XS: groups of 8 magnitudes are one of 256 / 512 grid points of 3 levels (bytes 8, 25,
 * 43 as IQ2_S), signs 7 per 8 with their parity as the 8th (the quantizer flips the least important
 * value's sign to make the count even). IQ2_XXS (66 bytes per 256): fp16 d, then per 32 values a u32 of
 * 4 grid indices and a u32 of four 7-bit sign masks and a 4-bit scale ls at bit 28. IQ2_XS (74 bytes):
 * fp16 d, a u16 per 8 values (9-bit grid index, 7 sign bits), 4-bit scales per 16. x = (d (0.5 + ls)
 * 0.25) grid * sign for both. The quantizers are lattice.ts's search with sigma2 = mean x^2, weights
 * importance * sqrt(sigma2 + x^2), the grid points at the 2 smallest distances as candidates, no fudge;
 * IQ2_XXS: sub-blocks of 32, trial scales from make_qp_quants' fit (t = -6..6), every group re-picked
 * at the end; IQ2_XS: sub-blocks of 16, t = -9..9 as IQ2_S. llama.cpp quantizes these two only with an
 * importance matrix (it asserts one); without one llmq weighs every column 1 (so a search, such as
 * AWQ's, can rank candidates), and recipes and the export refuse them as llama-quantize does.
 *
 * IQ2_S:
 * Groups of 8 magnitudes are one of 1024 grid points of 3 levels (2l + 1 in the quantizer; the
 * dequantizer's grid bytes are 8, 25, 43); signs are stored apart, 8 a byte. Block (82 bytes per 256):
 * fp16 d, 32 low bytes of the 10-bit grid indices, 32 sign bytes, 8 bytes of the indices' high bits, 8
 * bytes of 4-bit scales, one per 16 values; x = (d (0.5 + ls) 0.25) grid * sign. The quantizer is
 * lattice.ts's search: sub-blocks of 16, trial scales max / (5 + 0.1 t), t = -9..9, the single nearest
 * distance's grid points as candidates, weights sigma2 / 4 + x^2 without an importance matrix, d times
 * 0.9875. llama-quantize writes IQ2_S tensors only with an importance matrix.
 */
import {
  blockCount,
  GGML_BLOCK,
  type GgmlGroupCodes,
  groupCodes,
  type Importance,
  readF16,
  writeF16,
} from './ggml.ts';
import {
  checkSuperBlockRows,
  type LatticeSpec,
  pointCodes,
  pointOf,
  readU32,
  searchSuperBlockAt,
  signBits,
  signedCodeLevels,
  superScales,
  withParity,
  writeU16,
  writeU32,
} from './lattice.ts';

/** iq2xs_init_impl's kgrid_2bit_256: the IQ2_XXS grid, level l_i of point p at bits 2i of p. */
const KGRID_256 = Uint16Array.from([
  0, 2, 5, 8, 10, 17, 20, 32, 34, 40, 42, 65, 68, 80, 88, 97, 100, 128, 130, 138, 162, 257, 260, 272, 277,
  320, 388, 408, 512, 514, 546, 642, 1025, 1028, 1040, 1057, 1060, 1088, 1090, 1096, 1120, 1153, 1156, 1168,
  1188, 1280, 1282, 1288, 1312, 1350, 1385, 1408, 1425, 1545, 1552, 1600, 1668, 1700, 2048, 2053, 2056, 2068,
  2088, 2113, 2116, 2128, 2130, 2184, 2308, 2368, 2562, 2580, 4097, 4100, 4112, 4129, 4160, 4192, 4228, 4240,
  4245, 4352, 4360, 4384, 4432, 4442, 4480, 4644, 4677, 5120, 5128, 5152, 5157, 5193, 5248, 5400, 5474, 5632,
  5654, 6145, 6148, 6160, 6208, 6273, 6400, 6405, 6560, 6737, 8192, 8194, 8202, 8260, 8289, 8320, 8322, 8489,
  8520, 8704, 8706, 9217, 9220, 9232, 9280, 9302, 9472, 9537, 9572, 9872, 10248, 10272, 10388, 10820, 16385,
  16388, 16400, 16408, 16417, 16420, 16448, 16456, 16470, 16480, 16513, 16516, 16528, 16640, 16672, 16737,
  16768, 16773, 16897, 16912, 16968, 16982, 17000, 17408, 17416, 17440, 17536, 17561, 17682, 17700, 17920,
  18433, 18436, 18448, 18496, 18501, 18688, 18776, 18785, 18818, 19013, 19088, 20480, 20488, 20497, 20505,
  20512, 20608, 20616, 20740, 20802, 20900, 21137, 21648, 21650, 21770, 22017, 22100, 22528, 22545, 22553,
  22628, 22848, 23048, 24580, 24592, 24640, 24680, 24832, 24917, 25112, 25184, 25600, 25605, 25872, 25874,
  25988, 26690, 32768, 32770, 32778, 32833, 32898, 33028, 33048, 33088, 33297, 33793, 33796, 33808, 33813,
  33856, 33888, 34048, 34118, 34196, 34313, 34368, 34400, 34818, 35076, 35345, 36868, 36880, 36900, 36928,
  37025, 37142, 37248, 37445, 37888, 37922, 37956, 38225, 39041, 39200, 40962, 41040, 41093, 41225, 41472,
  42008, 43088, 43268,
]);

/** iq2xs_init_impl's kgrid_2bit_512: the IQ2_XS grid. */
const KGRID_512 = Uint16Array.from([
  0, 2, 5, 8, 10, 17, 20, 22, 25, 32, 34, 37, 40, 65, 68, 70, 73, 80, 82, 85, 88, 97, 100, 128, 130, 133, 136,
  145, 148, 153, 160, 257, 260, 262, 265, 272, 274, 277, 280, 282, 289, 292, 320, 322, 325, 328, 337, 340,
  352, 360, 385, 388, 400, 512, 514, 517, 520, 529, 532, 544, 577, 580, 592, 597, 640, 650, 1025, 1028, 1030,
  1033, 1040, 1042, 1045, 1048, 1057, 1060, 1088, 1090, 1093, 1096, 1105, 1108, 1110, 1120, 1153, 1156, 1168,
  1280, 1282, 1285, 1288, 1297, 1300, 1312, 1345, 1348, 1360, 1377, 1408, 1537, 1540, 1552, 1574, 1600, 1602,
  1668, 2048, 2050, 2053, 2056, 2058, 2065, 2068, 2080, 2085, 2113, 2116, 2128, 2136, 2176, 2208, 2218, 2305,
  2308, 2320, 2368, 2433, 2441, 2560, 2592, 2600, 2710, 2720, 4097, 4100, 4102, 4105, 4112, 4114, 4117, 4120,
  4129, 4132, 4160, 4162, 4165, 4168, 4177, 4180, 4192, 4202, 4225, 4228, 4240, 4352, 4354, 4357, 4360, 4369,
  4372, 4384, 4417, 4420, 4432, 4480, 4500, 4502, 4609, 4612, 4614, 4624, 4672, 4704, 5120, 5122, 5125, 5128,
  5137, 5140, 5152, 5185, 5188, 5193, 5200, 5220, 5248, 5377, 5380, 5392, 5440, 5632, 5652, 5705, 6145, 6148,
  6160, 6162, 6208, 6228, 6278, 6400, 6405, 6502, 6737, 6825, 8192, 8194, 8197, 8200, 8202, 8209, 8212, 8224,
  8257, 8260, 8272, 8320, 8352, 8449, 8452, 8464, 8512, 8520, 8549, 8704, 8738, 8832, 8872, 9217, 9220, 9232,
  9257, 9280, 9472, 9537, 9554, 9625, 9729, 9754, 9894, 10240, 10248, 10250, 10272, 10325, 10376, 10402,
  10600, 10640, 10760, 10784, 10882, 10888, 10890, 16385, 16388, 16390, 16393, 16400, 16402, 16405, 16408,
  16417, 16420, 16448, 16450, 16453, 16456, 16458, 16465, 16468, 16480, 16485, 16513, 16516, 16528, 16640,
  16642, 16645, 16648, 16657, 16660, 16672, 16705, 16708, 16720, 16768, 16773, 16802, 16897, 16900, 16912,
  16914, 16937, 16960, 17408, 17410, 17413, 17416, 17425, 17428, 17433, 17440, 17473, 17476, 17488, 17536,
  17556, 17665, 17668, 17680, 17700, 17728, 17818, 17920, 17930, 17988, 18000, 18433, 18436, 18448, 18496,
  18501, 18516, 18530, 18688, 18705, 18756, 18768, 18793, 18948, 20480, 20482, 20485, 20488, 20497, 20500,
  20512, 20520, 20545, 20548, 20560, 20608, 20737, 20740, 20752, 20757, 20800, 20802, 20992, 21060, 21162,
  21505, 21508, 21520, 21537, 21568, 21600, 21633, 21665, 21760, 21768, 21888, 21896, 22049, 22120, 22177,
  22528, 22548, 22593, 22608, 22681, 22810, 22848, 22850, 23173, 24577, 24580, 24592, 24640, 24660, 24674,
  24710, 24745, 24832, 25124, 25162, 25234, 25600, 25622, 25872, 25920, 25925, 26020, 26625, 26730, 26917,
  27142, 27220, 27234, 32768, 32770, 32773, 32776, 32785, 32788, 32800, 32810, 32833, 32836, 32848, 32896,
  32898, 32936, 32938, 33025, 33028, 33030, 33040, 33088, 33105, 33113, 33280, 33312, 33408, 33410, 33440,
  33448, 33793, 33796, 33808, 33810, 33813, 33856, 33888, 33929, 34048, 34116, 34213, 34328, 34410, 34816,
  34824, 34853, 34906, 34944, 34946, 34984, 35078, 35362, 35456, 35464, 35478, 35496, 36865, 36868, 36880,
  36928, 36950, 36996, 37120, 37154, 37220, 37462, 37513, 37888, 37893, 37956, 37968, 37976, 38185, 38288,
  38290, 38465, 38993, 39078, 39241, 39445, 39520, 40960, 40962, 40968, 40970, 40992, 41002, 41120, 41297,
  41305, 41382, 41472, 41474, 41480, 41514, 41600, 41632, 42048, 42133, 42597, 42648, 43018, 43040, 43042,
  43048, 43168, 43176, 43268, 43396, 43398, 43560, 43562, 43665, 43690,
]);

/** iq2xs_init_impl's kgrid_2bit_1024: the IQ2_S grid, level l_i of point p at bits 2i of p. */
const KGRID_1024 = Uint16Array.from([
  0, 2, 5, 8, 10, 17, 20, 22, 25, 32, 34, 37, 40, 65, 68, 70, 73, 80, 82, 85, 88, 97, 100, 102, 105, 128, 130,
  133, 136, 145, 148, 160, 165, 170, 257, 260, 262, 265, 272, 274, 277, 280, 289, 292, 320, 322, 325, 328,
  337, 340, 342, 345, 352, 357, 360, 385, 388, 400, 402, 405, 417, 420, 512, 514, 517, 520, 529, 532, 544,
  554, 577, 580, 582, 585, 592, 597, 640, 645, 650, 660, 674, 1025, 1028, 1030, 1033, 1040, 1042, 1045, 1048,
  1057, 1060, 1062, 1065, 1088, 1090, 1093, 1096, 1098, 1105, 1108, 1110, 1113, 1120, 1122, 1125, 1153, 1156,
  1158, 1161, 1168, 1173, 1176, 1185, 1188, 1280, 1282, 1285, 1288, 1290, 1297, 1300, 1302, 1305, 1312, 1317,
  1320, 1345, 1348, 1350, 1353, 1360, 1362, 1365, 1368, 1377, 1380, 1408, 1410, 1413, 1416, 1425, 1428, 1440,
  1537, 1540, 1542, 1545, 1552, 1557, 1600, 1605, 1608, 1617, 1620, 1632, 1665, 1668, 1680, 2048, 2050, 2053,
  2056, 2065, 2068, 2070, 2073, 2080, 2085, 2090, 2113, 2116, 2118, 2121, 2128, 2130, 2133, 2136, 2145, 2148,
  2176, 2181, 2196, 2218, 2305, 2308, 2320, 2322, 2325, 2328, 2337, 2368, 2373, 2376, 2385, 2388, 2400, 2433,
  2448, 2560, 2577, 2580, 2594, 2600, 2602, 2640, 2713, 4097, 4100, 4102, 4105, 4112, 4114, 4117, 4120, 4129,
  4132, 4134, 4160, 4162, 4165, 4168, 4177, 4180, 4182, 4185, 4192, 4194, 4197, 4200, 4225, 4228, 4230, 4240,
  4245, 4248, 4257, 4260, 4352, 4354, 4357, 4360, 4362, 4369, 4372, 4374, 4377, 4384, 4386, 4389, 4392, 4417,
  4420, 4422, 4425, 4432, 4434, 4437, 4440, 4449, 4452, 4480, 4482, 4485, 4488, 4497, 4500, 4609, 4612, 4617,
  4624, 4629, 4641, 4644, 4672, 4677, 4689, 4692, 4737, 4740, 4752, 5120, 5122, 5125, 5128, 5137, 5140, 5142,
  5145, 5152, 5157, 5160, 5185, 5188, 5190, 5193, 5200, 5202, 5205, 5208, 5217, 5220, 5248, 5250, 5253, 5256,
  5265, 5268, 5280, 5377, 5380, 5382, 5385, 5392, 5394, 5397, 5400, 5409, 5412, 5440, 5442, 5445, 5448, 5457,
  5460, 5472, 5505, 5508, 5520, 5632, 5637, 5640, 5649, 5652, 5664, 5697, 5700, 5712, 5760, 5802, 6145, 6148,
  6150, 6153, 6160, 6165, 6168, 6177, 6208, 6210, 6213, 6216, 6225, 6228, 6240, 6273, 6276, 6400, 6402, 6405,
  6408, 6417, 6420, 6432, 6465, 6468, 6480, 6505, 6562, 6660, 6672, 6720, 6742, 8192, 8194, 8197, 8200, 8209,
  8212, 8214, 8217, 8224, 8229, 8234, 8257, 8260, 8272, 8274, 8277, 8292, 8320, 8330, 8340, 8362, 8449, 8452,
  8464, 8466, 8469, 8481, 8512, 8514, 8517, 8529, 8532, 8544, 8577, 8580, 8592, 8704, 8714, 8738, 8744, 8746,
  8772, 8784, 8840, 8842, 8872, 9217, 9220, 9222, 9225, 9232, 9237, 9240, 9249, 9252, 9280, 9282, 9285, 9288,
  9297, 9300, 9312, 9345, 9348, 9360, 9472, 9477, 9480, 9489, 9492, 9504, 9537, 9540, 9552, 9574, 9600, 9729,
  9732, 9744, 9792, 9817, 10240, 10245, 10257, 10260, 10305, 10308, 10320, 10378, 10410, 10497, 10500, 10512,
  10645, 10762, 10786, 10852, 10888, 10890, 16385, 16388, 16390, 16393, 16400, 16402, 16405, 16408, 16410,
  16417, 16420, 16422, 16448, 16450, 16453, 16456, 16458, 16465, 16468, 16470, 16473, 16480, 16482, 16485,
  16513, 16516, 16528, 16533, 16536, 16545, 16548, 16640, 16642, 16645, 16648, 16657, 16660, 16662, 16665,
  16672, 16674, 16677, 16705, 16708, 16710, 16713, 16720, 16722, 16725, 16728, 16737, 16740, 16768, 16770,
  16773, 16776, 16785, 16788, 16800, 16897, 16900, 16912, 16914, 16917, 16920, 16932, 16960, 16965, 16968,
  16977, 16980, 16992, 17025, 17028, 17408, 17410, 17413, 17416, 17418, 17425, 17428, 17430, 17433, 17440,
  17442, 17445, 17448, 17473, 17476, 17478, 17481, 17488, 17490, 17493, 17496, 17505, 17508, 17536, 17538,
  17541, 17544, 17553, 17556, 17568, 17665, 17668, 17670, 17673, 17680, 17682, 17685, 17688, 17697, 17700,
  17728, 17730, 17733, 17736, 17745, 17748, 17760, 17770, 17793, 17796, 17808, 17920, 17922, 17925, 17928,
  17937, 17940, 17952, 17985, 17988, 18000, 18048, 18085, 18433, 18436, 18441, 18448, 18450, 18453, 18456,
  18465, 18468, 18496, 18498, 18501, 18504, 18513, 18516, 18528, 18564, 18576, 18688, 18690, 18693, 18696,
  18705, 18708, 18720, 18753, 18756, 18768, 18816, 18838, 18945, 18948, 18960, 19008, 20480, 20482, 20485,
  20488, 20497, 20500, 20502, 20505, 20512, 20514, 20517, 20520, 20545, 20548, 20550, 20553, 20560, 20562,
  20565, 20568, 20577, 20580, 20608, 20610, 20613, 20616, 20625, 20628, 20737, 20740, 20742, 20745, 20752,
  20754, 20757, 20760, 20769, 20772, 20800, 20802, 20805, 20808, 20817, 20820, 20832, 20865, 20868, 20880,
  20992, 20997, 21000, 21009, 21012, 21024, 21057, 21060, 21072, 21097, 21120, 21505, 21508, 21510, 21513,
  21520, 21522, 21525, 21528, 21537, 21540, 21568, 21570, 21573, 21576, 21585, 21588, 21600, 21633, 21636,
  21648, 21760, 21762, 21765, 21768, 21777, 21780, 21792, 21825, 21828, 21840, 21888, 22017, 22020, 22032,
  22054, 22080, 22528, 22530, 22533, 22536, 22545, 22548, 22560, 22593, 22596, 22608, 22618, 22656, 22785,
  22788, 22800, 22848, 23040, 23065, 23173, 23208, 24577, 24580, 24582, 24592, 24594, 24597, 24600, 24609,
  24612, 24640, 24645, 24648, 24657, 24660, 24672, 24708, 24720, 24832, 24834, 24837, 24840, 24849, 24852,
  24864, 24897, 24900, 24912, 24960, 24985, 25092, 25104, 25152, 25174, 25249, 25600, 25605, 25608, 25617,
  25620, 25632, 25665, 25668, 25680, 25728, 25857, 25860, 25872, 25920, 25930, 25960, 26002, 26112, 26260,
  26625, 26628, 26640, 26725, 26776, 26880, 26922, 27202, 27297, 32768, 32770, 32773, 32776, 32785, 32788,
  32793, 32800, 32805, 32833, 32836, 32848, 32850, 32853, 32856, 32865, 32896, 32901, 32913, 32916, 33025,
  33028, 33033, 33040, 33042, 33045, 33048, 33057, 33060, 33088, 33090, 33093, 33096, 33105, 33108, 33153,
  33156, 33168, 33193, 33280, 33285, 33290, 33297, 33300, 33345, 33348, 33360, 33793, 33796, 33798, 33801,
  33808, 33810, 33813, 33816, 33825, 33856, 33858, 33861, 33864, 33873, 33876, 33888, 33921, 33924, 33936,
  34048, 34050, 34053, 34056, 34065, 34068, 34080, 34113, 34116, 34128, 34176, 34186, 34305, 34308, 34320,
  34345, 34368, 34816, 34821, 34833, 34836, 34881, 34884, 34896, 34978, 35073, 35076, 35136, 35173, 35362,
  35416, 35418, 35458, 35490, 36865, 36868, 36873, 36880, 36882, 36885, 36888, 36900, 36928, 36930, 36933,
  36936, 36945, 36948, 36960, 36993, 36996, 37008, 37120, 37125, 37137, 37140, 37185, 37188, 37200, 37210,
  37377, 37380, 37392, 37440, 37542, 37888, 37890, 37893, 37896, 37905, 37908, 37920, 37953, 37956, 37968,
  38016, 38038, 38145, 38148, 38160, 38208, 38296, 38305, 38400, 38470, 38500, 38913, 38916, 38928, 38950,
  38976, 39081, 39168, 39241, 39250, 39568, 40960, 40965, 40970, 40980, 40994, 41002, 41025, 41028, 41040,
  41122, 41130, 41280, 41317, 41474, 41482, 41506, 41512, 41514, 41602, 41608, 41610, 41640, 41985, 41988,
  42000, 42048, 42121, 42148, 42240, 42265, 42577, 43018, 43048, 43170, 43348, 43398, 43528, 43530, 43552,
  43554, 43560, 43656, 43690,
]);

export const IQ2_XXS_BLOCK_BYTES = GGML_BLOCK.IQ2_XXS.bytes;
export const IQ2_XS_BLOCK_BYTES = GGML_BLOCK.IQ2_XS.bytes;
export const IQ2_S_BLOCK_BYTES = GGML_BLOCK.IQ2_S.bytes;
const QK_K = 256;
const fr = Math.fround;
const GRID_BYTES = signedCodeLevels([8, 25, 43]);

/** What IQ2_XXS and IQ2_XS share: 3 levels on 8 values, parity signs, the importance weights. */
const PARITY_2BIT = {
  group: 8,
  levelBits: 2,
  maxLevel: 2,
  distances: 2,
  stepSize: 0.1,
  skipBelow: fr(1e-15),
  paritySigns: true,
  sigmaScale: 1,
  plainWeights: 'unit',
  fudge: 1,
  codeLevels: GRID_BYTES,
} as const;

export const IQ2_XXS_SPEC: Readonly<LatticeSpec> = {
  ...PARITY_2BIT,
  points: KGRID_256,
  subBlock: 32,
  steps: 6,
  refit: 'all',
  trialMax: 'qp',
};

export const IQ2_XS_SPEC: Readonly<LatticeSpec> = {
  ...PARITY_2BIT,
  points: KGRID_512,
  subBlock: 16,
  steps: 9,
  refit: 'off-grid',
  trialMax: 'max',
};

export const IQ2_S_SPEC: Readonly<LatticeSpec> = {
  points: KGRID_1024,
  group: 8,
  levelBits: 2,
  maxLevel: 2,
  distances: 1,
  subBlock: 16,
  steps: 9,
  stepSize: 0.1,
  skipBelow: fr(1e-8),
  paritySigns: false,
  refit: 'off-grid',
  sigmaScale: 2,
  plainWeights: 'sigma',
  trialMax: 'max',
  fudge: 0.9875,
  codeLevels: GRID_BYTES,
};

/** x (rows of a multiple of 256) -> IQ2_S blocks, as llama.cpp's quantize_iq2_s (imatrix: its quant_weights). */
export function quantizeIq2S(x: Float32Array, imatrix?: Importance): Uint8Array {
  checkSuperBlockRows(x, imatrix, 'IQ2_S');
  const out = new Uint8Array((x.length / QK_K) * IQ2_S_BLOCK_BYTES);
  for (let b = 0; b < x.length / QK_K; b++) {
    const o = b * IQ2_S_BLOCK_BYTES;
    const subs = searchSuperBlockAt(IQ2_S_SPEC, x, b, imatrix);
    subs.forEach((s, ib) => {
      if (!s) return;
      for (let k = 0; k < 2; k++) {
        const g = 2 * ib + k;
        out[o + 2 + g] = s.grid[k] & 255;
        out[o + 66 + (g >> 2)] |= (s.grid[k] >> 8) << (2 * (g % 4));
        out[o + 34 + g] = s.signs[k];
      }
    });
    const scales = superScales(subs);
    if (!scales) continue;
    const { d, ls } = scales;
    writeF16(out, o, fr(d * fr(IQ2_S_SPEC.fudge)));
    for (let ib = 0; ib < QK_K / 16; ib += 2) out[o + 74 + ib / 2] = ls[ib] | (ls[ib + 1] << 4);
  }
  return out;
}

/** IQ2_S blocks as codes (level + 8 for negative) and per-16 scale d (0.5 + ls) 0.25: x = scale * level[code]. */
export function unpackIq2S(bytes: Uint8Array, n = (bytes.length / IQ2_S_BLOCK_BYTES) * QK_K): GgmlGroupCodes {
  const u: GgmlGroupCodes = { ...groupCodes(n, 16, 4, false), levels: IQ2_S_SPEC.codeLevels };
  for (let b = 0; b < blockCount(bytes, 'IQ2_S', n); b++) {
    const o = b * IQ2_S_BLOCK_BYTES;
    const d = readF16(bytes, o);
    for (let ib = 0; ib < QK_K / 16; ib++) {
      const ls = (bytes[o + 74 + (ib >> 1)] >> (4 * (ib % 2))) & 15;
      u.scales[b * 16 + ib] = fr(fr(d * fr(0.5 + ls)) * 0.25);
    }
    for (let g = 0; g < QK_K / 8; g++) {
      const j = bytes[o + 2 + g] | (((bytes[o + 66 + (g >> 2)] >> (2 * (g % 4))) & 3) << 8);
      pointCodes(IQ2_S_SPEC, j, bytes[o + 34 + g], u.codes, b * QK_K + 8 * g);
    }
  }
  return u;
}

/** Writes an IQ2_S block's grid indices, their high bits and the signs from 256 codes (d and scales are kept). */
export function packIq2SCodes(codes: Uint8Array, at: number, out: Uint8Array, o: number): void {
  out.fill(0, o + 66, o + 74);
  for (let g = 0; g < QK_K / 8; g++) {
    const j = pointOf(IQ2_S_SPEC, codes, at + 8 * g, 'iq2_s');
    out[o + 2 + g] = j & 255;
    out[o + 66 + (g >> 2)] |= (j >> 8) << (2 * (g % 4));
    out[o + 34 + g] = signBits(codes, at + 8 * g);
  }
}

/** x (rows of a multiple of 256) -> IQ2_XXS blocks, as llama.cpp's quantize_iq2_xxs (imatrix: its quant_weights). */
export function quantizeIq2Xxs(x: Float32Array, imatrix?: Importance): Uint8Array {
  checkSuperBlockRows(x, imatrix, 'IQ2_XXS');
  const out = new Uint8Array((x.length / QK_K) * IQ2_XXS_BLOCK_BYTES);
  for (let b = 0; b < x.length / QK_K; b++) {
    const o = b * IQ2_XXS_BLOCK_BYTES;
    const subs = searchSuperBlockAt(IQ2_XXS_SPEC, x, b, imatrix);
    const scales = superScales(subs);
    if (!scales) continue;
    writeF16(out, o, scales.d);
    subs.forEach((s, ib) => {
      if (s) out.set(s.grid, o + 2 + 8 * ib);
      const signs = s ? s.signs[0] | (s.signs[1] << 7) | (s.signs[2] << 14) | (s.signs[3] << 21) : 0;
      writeU32(out, o + 6 + 8 * ib, (signs | (scales.ls[ib] << 28)) >>> 0);
    });
  }
  return out;
}

/** x (rows of a multiple of 256) -> IQ2_XS blocks, as llama.cpp's quantize_iq2_xs (imatrix: its quant_weights). */
export function quantizeIq2Xs(x: Float32Array, imatrix?: Importance): Uint8Array {
  checkSuperBlockRows(x, imatrix, 'IQ2_XS');
  const out = new Uint8Array((x.length / QK_K) * IQ2_XS_BLOCK_BYTES);
  for (let b = 0; b < x.length / QK_K; b++) {
    const o = b * IQ2_XS_BLOCK_BYTES;
    const subs = searchSuperBlockAt(IQ2_XS_SPEC, x, b, imatrix);
    const scales = superScales(subs);
    if (!scales) continue;
    writeF16(out, o, scales.d);
    subs.forEach((s, ib) => {
      for (let k = 0; s && k < 2; k++) writeU16(out, o + 2 + 4 * ib + 2 * k, s.grid[k] | (s.signs[k] << 9));
    });
    for (let ib = 0; ib < QK_K / 16; ib += 2) out[o + 66 + ib / 2] = scales.ls[ib] | (scales.ls[ib + 1] << 4);
  }
  return out;
}

/** IQ2_XXS blocks as codes (level + 8 for negative) and per-32 scale d (0.5 + ls) 0.25: x = scale * level[code]. */
export function unpackIq2Xxs(
  bytes: Uint8Array,
  n = (bytes.length / IQ2_XXS_BLOCK_BYTES) * QK_K,
): GgmlGroupCodes {
  const u: GgmlGroupCodes = { ...groupCodes(n, 32, 4, false), levels: GRID_BYTES };
  for (let b = 0; b < blockCount(bytes, 'IQ2_XXS', n); b++) {
    const o = b * IQ2_XXS_BLOCK_BYTES;
    const d = readF16(bytes, o);
    for (let ib = 0; ib < QK_K / 32; ib++) {
      const aux = readU32(bytes, o + 6 + 8 * ib);
      u.scales[b * 8 + ib] = fr(fr(d * fr(0.5 + (aux >>> 28))) * 0.25);
      for (let l = 0; l < 4; l++) {
        const signs = withParity((aux >>> (7 * l)) & 127);
        pointCodes(IQ2_XXS_SPEC, bytes[o + 2 + 8 * ib + l], signs, u.codes, b * QK_K + 32 * ib + 8 * l);
      }
    }
  }
  return u;
}

/** IQ2_XS blocks as codes (level + 8 for negative) and per-16 scale d (0.5 + ls) 0.25: x = scale * level[code]. */
export function unpackIq2Xs(
  bytes: Uint8Array,
  n = (bytes.length / IQ2_XS_BLOCK_BYTES) * QK_K,
): GgmlGroupCodes {
  const u: GgmlGroupCodes = { ...groupCodes(n, 16, 4, false), levels: GRID_BYTES };
  for (let b = 0; b < blockCount(bytes, 'IQ2_XS', n); b++) {
    const o = b * IQ2_XS_BLOCK_BYTES;
    const d = readF16(bytes, o);
    for (let ib = 0; ib < QK_K / 16; ib++) {
      const ls = (bytes[o + 66 + (ib >> 1)] >> (4 * (ib % 2))) & 15;
      u.scales[b * 16 + ib] = fr(fr(d * fr(0.5 + ls)) * 0.25);
    }
    for (let g = 0; g < QK_K / 8; g++) {
      const q = bytes[o + 2 + 2 * g] | (bytes[o + 3 + 2 * g] << 8);
      pointCodes(IQ2_XS_SPEC, q & 511, withParity(q >> 9), u.codes, b * QK_K + 8 * g);
    }
  }
  return u;
}

/** Writes an IQ2_XXS block's grid indices and sign bits from 256 codes (d and the 4-bit scales are kept). */
export function packIq2XxsCodes(codes: Uint8Array, at: number, out: Uint8Array, o: number): void {
  for (let ib = 0; ib < QK_K / 32; ib++) {
    let signs = 0;
    for (let l = 0; l < 4; l++) {
      const c = at + 32 * ib + 8 * l;
      out[o + 2 + 8 * ib + l] = pointOf(IQ2_XXS_SPEC, codes, c, 'iq2_xxs');
      signs |= (signBits(codes, c) & 127) << (7 * l);
    }
    const aux = readU32(out, o + 6 + 8 * ib);
    writeU32(out, o + 6 + 8 * ib, ((aux & 0xf0000000) | signs) >>> 0);
  }
}

/** Writes an IQ2_XS block's grid indices and signs from 256 codes (d and scales are kept). */
export function packIq2XsCodes(codes: Uint8Array, at: number, out: Uint8Array, o: number): void {
  for (let g = 0; g < QK_K / 8; g++) {
    const j = pointOf(IQ2_XS_SPEC, codes, at + 8 * g, 'iq2_xs');
    writeU16(out, o + 2 + 2 * g, j | ((signBits(codes, at + 8 * g) & 127) << 9));
  }
}
