// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @title TestToken — a USDC-like ERC-20 for devnets and tests
/// @notice 6 decimals like USDC, and a faucet: anyone may mint any amount. Never deploy it where the token
///         is meant to have value; it exists so that ERC-20 sessions can be exercised without a real one.
contract TestToken is ERC20 {
    constructor() ERC20("Test USD Coin", "USDC") {}

    /// @notice The faucet: creates `amount` (in 10^-6 units) for `to`. Open to anyone on purpose.
    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }

    /// @inheritdoc ERC20
    function decimals() public pure override returns (uint8) {
        return 6;
    }
}
