//! The vocabulary of a ladder: `Side`, `Level`, and the wire-order invariant every book keeps.
//!
//! These are book terms, not wire terms: the decoders in `protocol` produce them (their
//! `Deserialize` lives there), the book, the view and the simulator consume them.

use crate::decimal::{Price, Size};

/// Order side. In `price_change`, BUY is a bid level and SELL an ask level; in
/// `last_trade_price` it is the taker's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Side {
    #[serde(rename = "BUY")]
    Buy,
    #[serde(rename = "SELL")]
    Sell,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Buy => "BUY",
            Side::Sell => "SELL",
        }
    }

    pub fn opposite(self) -> Side {
        match self {
            Side::Buy => Side::Sell,
            Side::Sell => Side::Buy,
        }
    }
}

/// One aggregated price level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Level {
    pub price: Price,
    pub size: Size,
}

impl Level {
    pub const fn new(price: Price, size: Size) -> Self {
        Level { price, size }
    }
}

/// How a ladder broke the wire-order invariant (bids strictly ascending, asks strictly
/// descending, best last, no zero size). The first offending level is named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvariantError {
    #[error("{side:?} level {index} at {price} has zero size")]
    ZeroSize { side: Side, index: usize, price: Price },
    #[error("{side:?} level {index} at {price} is followed by {next}, against wire order")]
    OutOfOrder { side: Side, index: usize, price: Price, next: Price },
}

/// Checks one side's levels against wire order: what every book holds after every change, and
/// what a clean snapshot already is.
pub fn check_ladder(levels: &[Level], side: Side) -> Result<(), InvariantError> {
    if let Some((index, l)) = levels.iter().enumerate().find(|(_, l)| l.size.is_zero()) {
        return Err(InvariantError::ZeroSize { side, index, price: l.price });
    }
    let misordered = |w: &[Level]| match side {
        Side::Buy => w[0].price >= w[1].price,
        Side::Sell => w[0].price <= w[1].price,
    };
    match levels.windows(2).position(misordered) {
        Some(index) => Err(InvariantError::OutOfOrder {
            side,
            index,
            price: levels[index].price,
            next: levels[index + 1].price,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(price: u32, size: u64) -> Level {
        Level::new(Price::from_units(price), Size::from_units(size))
    }

    #[test]
    fn check_ladder_names_the_first_offence() {
        assert_eq!(check_ladder(&[], Side::Buy), Ok(()));
        assert_eq!(check_ladder(&[l(1, 1), l(2, 1)], Side::Buy), Ok(()));
        assert_eq!(check_ladder(&[l(2, 1), l(1, 1)], Side::Sell), Ok(()));
        assert_eq!(
            check_ladder(&[l(1, 1), l(1, 2)], Side::Buy),
            Err(InvariantError::OutOfOrder {
                side: Side::Buy,
                index: 0,
                price: Price::from_units(1),
                next: Price::from_units(1)
            })
        );
        assert!(matches!(
            check_ladder(&[l(1, 1), l(2, 1)], Side::Sell),
            Err(InvariantError::OutOfOrder { index: 0, .. })
        ));
        assert_eq!(
            check_ladder(&[l(1, 1), l(2, 0)], Side::Buy),
            Err(InvariantError::ZeroSize {
                side: Side::Buy,
                index: 1,
                price: Price::from_units(2)
            })
        );
    }
}
